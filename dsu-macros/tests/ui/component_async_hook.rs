#[dsu::state]
#[derive(Default)]
pub struct Store {
    n: u64,
}

#[dsu::component]
impl Store {
    pub async fn get(&self) -> u64 {
        self.n
    }

    pub async fn health_check(&self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
