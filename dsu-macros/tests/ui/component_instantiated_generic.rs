// The generic-impl error says "instantiate the type first"; an instantiated impl is still
// rejected, since a state type cannot be generic at all.
pub struct Slot<T> {
    value: T,
}

#[dsu::component]
impl Slot<u64> {
    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
