//! `async fn` methods, `&self` and `&mut self`, beside sync ones, calling another component.

#[dsu::state]
#[derive(Default)]
pub struct Store {
    map: std::collections::HashMap<String, String>,
}

#[dsu::component]
impl Store {
    pub async fn put(&mut self, k: String, v: String) -> Option<String> {
        self.map.insert(k, v)
    }

    pub async fn get(&self, k: String) -> Option<String> {
        self.map.get(&k).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[dsu::state]
pub struct Front {
    store: dsu::Handle<Store>,
}

#[dsu::component]
impl Front {
    pub async fn put(&self, k: String, v: String) -> usize {
        self.store.put(k, v).await;
        self.store.len()
    }
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    let store = dsu::register(Store::default());
    let front = dsu::register(Front { store });
    let fut = front.put("a".into(), "1".into());
    assert_send(&fut);
    drop(fut);
}
