//! Two components whose maps are `dsu::LazyMap`s, for type changes converted incrementally: a
//! map of structs that hold a `String` and a `Vec` (`put K NAME SCORE`, `fill N` for keys
//! k0..k{N-1}, `show K`), and kvstore's shape, byte keys to byte values (`kfill N` for keys
//! key:0..key:{N-1}, `kset K V`, `kget K`); `len`, `pending` (entries not yet converted),
//! `version`.

mod server;

use dsu::LazyMap;

#[dsu::state]
pub struct Item {
    pub name: String,
    pub tags: Vec<String>,
    pub score: u32,
    /// New in v2: every entry is converted, its other fields moved.
    pub seen: u64,
}

#[dsu::state]
#[derive(Default)]
pub struct Dir {
    entries: LazyMap<String, Item>,
    puts: u64,
}

#[dsu::component]
impl Dir {
    pub fn put(&mut self, k: String, name: String, score: u32) {
        self.puts += 1;
        let tags = vec![format!("tag-{k}"), "second".to_string()];
        self.entries.insert(
            k,
            Item {
                name,
                tags,
                score,
                seen: 0,
            },
        );
    }

    pub fn show(&self, k: &str) -> String {
        match self.entries.get(k) {
            Some(i) => format!("{} {} {} seen={}", i.name, i.tags.join(","), i.score, i.seen),
            None => "(nil)".to_string(),
        }
    }

    pub fn len(&self) -> String {
        format!("{} puts={}", self.entries.len(), self.puts)
    }

    pub fn pending(&self) -> usize {
        self.entries.unconverted()
    }

    pub fn version(&self) -> String {
        "v2".to_string()
    }
}

#[dsu::state]
pub struct Entry {
    pub value: Vec<u8>,
    /// New in v2, as in kvstore v3.
    pub expires_at: Option<u64>,
}

#[dsu::state]
#[derive(Default)]
pub struct Keys {
    map: LazyMap<Vec<u8>, Entry>,
}

#[dsu::component]
impl Keys {
    pub fn set(&mut self, k: Vec<u8>, value: Vec<u8>) {
        self.map.insert(
            k,
            Entry {
                value,
                expires_at: None,
            },
        );
    }

    pub fn get(&self, k: &[u8]) -> String {
        match self.map.get(k) {
            Some(e) => format!("{} {:?}", String::from_utf8_lossy(&e.value), e.expires_at),
            None => "(nil)".to_string(),
        }
    }

    pub fn pending(&self) -> usize {
        self.map.unconverted()
    }
}

/// Writes a marker file when its state is dropped, for the test of a clean exit after a
/// hand-off (`mark PATH`); `poison` poisons it. The same in every version.
#[dsu::state]
#[derive(Default)]
pub struct Closer {
    marker: Option<String>,
}

#[dsu::component]
impl Closer {
    pub fn mark(&mut self, path: String) {
        self.marker = Some(path);
    }

    /// Panics, which poisons the component (`poison`, for the test of poison across a
    /// hand-off).
    pub fn fail(&mut self) {
        panic!("asked to fail");
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(path) = &self.marker {
            let _ = std::fs::write(path, format!("dropped by pid {}", std::process::id()));
        }
    }
}

fn main() {
    let args = server::Args::parse();
    let rt = dsu::Runtime::builder()
        .program("lazy")
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&args.socket)
        .start()
        .expect("start the dsu runtime");
    let dir = rt.register(Dir::default());
    let keys = rt.register(Keys::default());
    let closer = rt.register(Closer::default());
    server::serve(args.port, || rt.ready(), move |line| {
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
            ["kfill", n] => {
                let n: u32 = n.parse().unwrap_or(0);
                for i in 0..n {
                    keys.set(format!("key:{i}").into_bytes(), format!("value-{i}").into_bytes());
                }
                "ok".to_string()
            }
            ["kset", k, v] => {
                keys.set(k.as_bytes().to_vec(), v.as_bytes().to_vec());
                "ok".to_string()
            }
            ["kget", k] => keys.get(k.as_bytes()),
            ["mark", path] => {
                closer.mark(path.to_string());
                "ok".to_string()
            }
            ["poison"] => {
                closer.fail();
                "ok".to_string()
            }
            ["len"] => dir.len(),
            ["pending"] => format!("{} {}", dir.pending(), keys.pending()),
            ["version"] => dir.version(),
            _ => format!("error unknown command `{line}`"),
        }
    });
}
