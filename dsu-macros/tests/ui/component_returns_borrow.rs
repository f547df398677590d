#[dsu::state]
#[derive(Default)]
pub struct Names {
    names: Vec<String>,
}

#[dsu::component]
impl Names {
    pub fn first(&self) -> &str {
        &self.names[0]
    }
}

fn main() {}
