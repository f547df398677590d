//! Case `field_untransferable`: in v2 the field `last_miss` of the `Cache` component changes
//! from a count (`u64`) to the last key that missed (`String`): no conversion can be generated.
//! Expected: refused until a `#[dsu::transfer]` says how to convert it.

use std::collections::HashMap;

#[dsu::state]
#[derive(Default)]
pub struct Cache {
    map: HashMap<String, String>,
    last_miss: String,
}

#[dsu::component]
impl Cache {
    pub fn insert(&mut self, k: String, v: String) {
        self.map.insert(k, v);
    }

    pub fn lookup(&mut self, k: &str) -> Option<String> {
        let v = self.map.get(k).cloned();
        if v.is_none() {
            self.last_miss = k.to_string();
        }
        v
    }

    pub fn stats(&self) -> String {
        format!("{} keys, last miss {}", self.map.len(), self.last_miss)
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
