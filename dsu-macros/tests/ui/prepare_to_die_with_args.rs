#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn prepare_to_die(&mut self, reason: String) {
        let _ = reason;
        self.n = 0;
    }
}

fn main() {}
