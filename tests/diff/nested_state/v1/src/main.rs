//! Case `nested_state`: the `Directory` component's state holds `HashMap<String, Entry>`, where
//! `Entry` is a `#[dsu::state]` struct of the same module; in v2 `Entry` gains a field
//! `created: u64` (set by `put`, shown by `describe`). Expected: category 1 (one component;
//! the new field of each entry starts at its default).

use std::collections::HashMap;

#[dsu::state]
pub struct Entry {
    value: String,
    reads: u64,
}

#[dsu::state]
#[derive(Default)]
pub struct Directory {
    entries: HashMap<String, Entry>,
}

#[dsu::component]
impl Directory {
    pub fn put(&mut self, k: String, value: String) {
        let entry = Entry { value, reads: 0 };
        self.entries.insert(k, entry);
    }

    pub fn describe(&mut self, k: &str) -> String {
        match self.entries.get_mut(k) {
            Some(e) => {
                e.reads += 1;
                format!("{} (read {} times)", e.value, e.reads)
            }
            None => "(nil)".to_string(),
        }
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let directory = rt.register(Directory::default());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        match line.split_once('=') {
            Some((k, v)) => directory.put(k.trim().to_string(), v.trim().to_string()),
            None => println!("{}", directory.describe(line.trim())),
        }
    }
}
