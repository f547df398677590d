//! Case `main_refused`: v2 changes only code in `main` (a different start-up message and an
//! extra call). Expected: refused (code outside the components changes).

#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }

    pub fn get(&self) -> u64 {
        self.n
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let counter = rt.register(Counter::default());
    eprintln!("counter ready");
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        let k = line.trim().parse().unwrap_or(1);
        println!("{}", counter.add(k));
    }
}
