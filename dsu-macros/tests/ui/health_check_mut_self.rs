#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn health_check(&mut self) -> Result<(), String> {
        self.n = 0;
        Ok(())
    }
}

fn main() {}
