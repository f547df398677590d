#[dsu::state]
#[derive(Default)]
pub struct Store {
    map: std::collections::HashMap<String, String>,
}

#[dsu::component]
impl Store {
    pub async fn lookup(&self, k: &str) -> Option<String> {
        self.map.get(k).cloned()
    }
}

fn main() {}
