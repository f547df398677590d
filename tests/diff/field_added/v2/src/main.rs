//! Case `field_added`: in v2 the state of the `Cache` component gains a field `hits: u64`,
//! counted by `lookup` and shown by `stats`. Expected: category 1 (one component; the new
//! field starts at its default).

use std::collections::HashMap;

#[dsu::state]
#[derive(Default)]
pub struct Cache {
    map: HashMap<String, String>,
    hits: u64,
}

#[dsu::component]
impl Cache {
    pub fn insert(&mut self, k: String, v: String) {
        self.map.insert(k, v);
    }

    pub fn lookup(&mut self, k: &str) -> Option<String> {
        self.hits += 1;
        self.map.get(k).cloned()
    }

    pub fn stats(&self) -> String {
        format!("{} keys, {} hits", self.map.len(), self.hits)
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let cache = rt.register(Cache::default());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("set"), Some(k), Some(v)) => {
                cache.insert(k.to_string(), v.to_string());
                "ok".to_string()
            }
            (Some("get"), Some(k), None) => cache.lookup(k).unwrap_or_else(|| "(nil)".into()),
            _ => cache.stats(),
        };
        println!("{reply}");
    }
}
