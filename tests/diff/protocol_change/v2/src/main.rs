//! Case `protocol_change`: `Checkout::pay` calls the `Journal` component through a handle in
//! its state, inside Journal's `session` protocol (`open` ... `close`). In v2 the signature of
//! `Journal::record`, which only `Checkout` calls, changes from `record(&mut self, x: u32)` to
//! `record(&mut self, x: u32, tag: String)`, and Checkout's call site changes accordingly.
//! Expected: category 2 (a protocol between components: both are updated together).

#[dsu::state]
#[derive(Default)]
pub struct Journal {
    open: bool,
    lines: Vec<String>,
}

#[dsu::component]
impl Journal {
    #[dsu::protocol(begin = "session")]
    pub fn open(&mut self) {
        self.open = true;
        self.lines.clear();
    }

    pub fn record(&mut self, x: u32, tag: String) {
        self.lines.push(format!("{tag}:{x}"));
    }

    #[dsu::protocol(end = "session")]
    pub fn close(&mut self) -> String {
        self.open = false;
        self.lines.join(",")
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[dsu::state]
pub struct Checkout {
    journal: dsu::Handle<Journal>,
}

#[dsu::component]
impl Checkout {
    pub fn pay(&self, amounts: Vec<u32>) -> String {
        self.journal.open();
        for x in amounts {
            self.journal.record(x, "pay".to_string());
        }
        self.journal.close()
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let journal = rt.register(Journal::default());
    let checkout = rt.register(Checkout {
        journal: journal.clone(),
    });
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        let amounts = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        println!("{} (open: {})", checkout.pay(amounts), journal.is_open());
    }
}
