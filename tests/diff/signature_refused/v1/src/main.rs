//! Case `signature_refused`: in v2 the signature of `Kv::get` changes from
//! `get(&self, k: &str) -> Option<String>` to `get(&self, k: &str, default: &str) -> String`,
//! and its call site in `main` changes with it. Expected: refused (the signature of a method
//! called from outside the components changes, and `main` changes).

use std::collections::HashMap;

#[dsu::state]
#[derive(Default)]
pub struct Kv {
    map: HashMap<String, String>,
}

#[dsu::component]
impl Kv {
    pub fn set(&mut self, k: String, v: String) {
        self.map.insert(k, v);
    }

    pub fn get(&self, k: &str) -> Option<String> {
        self.map.get(k).cloned()
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let kv = rt.register(Kv::default());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        match line.split_once('=') {
            Some((k, v)) => kv.set(k.trim().to_string(), v.trim().to_string()),
            None => println!(
                "{}",
                kv.get(line.trim()).unwrap_or_else(|| "(nil)".to_string())
            ),
        }
    }
}
