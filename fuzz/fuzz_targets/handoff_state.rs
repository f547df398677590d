//! The components the `handoff_stream` target reads streamed states of, and its seed generator
//! writes them from: the shapes of the services dsu hands off. A lazy map of structs that hold
//! a `String` and a `Vec` (pre-copied in batches), a lazy map of byte strings (kvstore's
//! keyspace), and a plain state with a `HashMap`, an `Option` and a nested struct.

use std::collections::HashMap;

use dsu::LazyMap;

#[dsu::state]
pub struct Item {
    pub name: String,
    pub tags: Vec<String>,
    pub score: u32,
}

#[dsu::state]
#[derive(Default)]
pub struct Dir {
    pub entries: LazyMap<String, Item>,
    pub puts: u64,
}

#[dsu::component]
impl Dir {
    pub fn put(&mut self, k: String, name: String, score: u32) {
        self.puts += 1;
        let tags = vec![format!("tag-{k}"), "second".to_string()];
        self.entries.insert(k, Item { name, tags, score });
    }
}

#[dsu::state]
pub struct Entry {
    pub value: Vec<u8>,
}

#[dsu::state]
#[derive(Default)]
pub struct Keys {
    pub map: LazyMap<Vec<u8>, Entry>,
}

#[dsu::component]
impl Keys {
    pub fn set(&mut self, k: Vec<u8>, value: Vec<u8>) {
        self.map.insert(k, Entry { value });
    }
}

#[dsu::state]
#[derive(Default)]
pub struct Limits {
    pub max: u64,
    pub label: Option<String>,
}

#[dsu::state]
#[derive(Default)]
pub struct Plain {
    pub counts: HashMap<String, u64>,
    pub limits: Limits,
    pub last: Option<Vec<u8>>,
}

#[dsu::component]
impl Plain {
    pub fn count(&mut self, k: String) -> u64 {
        let n = self.counts.entry(k).or_default();
        *n += 1;
        *n
    }
}
