//! A map of structs in a component, for the transfers that move a map's entries: `put K NAME
//! SCORE`, `fill N` (keys k0..k{N-1}), `show K`, `len`, `version`.

mod server;

use std::collections::HashMap;

#[dsu::state]
pub struct Item {
    pub name: String,
    pub tags: Vec<String>,
    pub score: u32,
}

#[dsu::state]
#[derive(Default)]
pub struct Dir {
    entries: HashMap<String, Item>,
    puts: u64,
}

#[dsu::component]
impl Dir {
    pub fn put(&mut self, k: String, name: String, score: u32) {
        self.puts += 1;
        let tags = vec![format!("tag-{k}"), "second".to_string()];
        self.entries.insert(k, Item { name, tags, score });
    }

    pub fn show(&self, k: &str) -> String {
        match self.entries.get(k) {
            Some(i) => format!("{} {} {}", i.name, i.tags.join(","), i.score),
            None => "(nil)".to_string(),
        }
    }

    pub fn len(&self) -> String {
        format!("{} puts={}", self.entries.len(), self.puts)
    }

    pub fn version(&self) -> String {
        "v1".to_string()
    }
}

fn main() {
    let args = server::Args::parse();
    let rt = dsu::Runtime::builder()
        .program("dir")
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&args.socket)
        .start()
        .expect("start the dsu runtime");
    let dir = rt.register(Dir::default());
    server::serve(args.port, move |line| {
        let p: Vec<&str> = line.split_whitespace().collect();
        match p.as_slice() {
            ["put", k, name, score] => {
                dir.put(k.to_string(), name.to_string(), score.parse().unwrap_or(0));
                "ok".to_string()
            }
            ["fill", n] => {
                let n: u32 = n.parse().unwrap_or(0);
                for i in 0..n {
                    dir.put(format!("k{i}"), format!("name-of-{i}"), i % 100);
                }
                "ok".to_string()
            }
            ["show", k] => dir.show(k),
            ["len"] => dir.len(),
            ["version"] => dir.version(),
            _ => format!("error unknown command `{line}`"),
        }
    });
}
