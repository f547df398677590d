#[dsu::state]
#[derive(Default)]
pub struct Store {
    n: u64,
}

async fn tick() {}

#[dsu::component]
impl Store {
    // An `Rc` held across an `.await`: the future is not `Send`.
    pub async fn get(&self) -> u64 {
        let local = std::rc::Rc::new(self.n);
        tick().await;
        *local
    }
}

fn main() {}
