pub struct Slot<T> {
    value: T,
}

#[dsu::component]
impl<T: Clone> Slot<T> {
    pub fn get(&self) -> T {
        self.value.clone()
    }
}

fn main() {}
