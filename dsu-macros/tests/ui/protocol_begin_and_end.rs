#[dsu::state]
#[derive(Default)]
pub struct Txn {
    open: bool,
}

#[dsu::component]
impl Txn {
    #[dsu::protocol(begin = "txn", end = "txn")]
    pub fn step(&mut self) {
        self.open = !self.open;
    }
}

fn main() {}
