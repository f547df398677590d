//! Case `field_removed`: in v2 the state of the `Inventory` component loses its field
//! `history: Vec<String>` and the code that used it. Expected: category 1 (one component; the
//! removed field is dropped).

use std::collections::HashMap;

#[dsu::state]
#[derive(Default)]
pub struct Inventory {
    stock: HashMap<String, u32>,
    history: Vec<String>,
}

#[dsu::component]
impl Inventory {
    pub fn add(&mut self, item: String, n: u32) -> u32 {
        self.history.push(format!("+{n} {item}"));
        let count = self.stock.entry(item).or_insert(0);
        *count += n;
        *count
    }

    pub fn count(&self, item: &str) -> u32 {
        self.stock.get(item).copied().unwrap_or(0)
    }

    pub fn report(&self) -> String {
        format!("{} items, {} changes", self.stock.len(), self.history.len())
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let inventory = rt.register(Inventory::default());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("add"), Some(item), n) => {
                let n = n.and_then(|n| n.parse().ok()).unwrap_or(1);
                inventory.add(item.to_string(), n).to_string()
            }
            (Some("count"), Some(item), None) => inventory.count(item).to_string(),
            _ => inventory.report(),
        };
        println!("{reply}");
    }
}
