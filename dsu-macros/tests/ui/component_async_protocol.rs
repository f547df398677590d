#[dsu::state]
#[derive(Default)]
pub struct Session {
    open: bool,
}

#[dsu::component]
impl Session {
    #[dsu::protocol(begin = "login")]
    pub async fn open(&mut self) {
        self.open = true;
    }

    #[dsu::protocol(end = "login")]
    pub fn close(&mut self) {
        self.open = false;
    }
}

fn main() {}
