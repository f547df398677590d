//! Case `new_method`: in v2 the `Stats` component gains a method `mean`, which the existing
//! method `report` now calls; nothing outside the component's impl changes. Expected:
//! category 1 (one component).

#[dsu::state]
#[derive(Default)]
pub struct Stats {
    count: u64,
    sum: u64,
}

#[dsu::component]
impl Stats {
    pub fn add(&mut self, x: u64) -> u64 {
        self.count += 1;
        self.sum += x;
        self.count
    }

    pub fn report(&self) -> String {
        format!(
            "{} values, sum {}, mean {}",
            self.count,
            self.sum,
            self.mean()
        )
    }

    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let stats = rt.register(Stats::default());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        match line.trim().parse() {
            Ok(x) => println!("{}", stats.add(x)),
            Err(_) => println!("{}", stats.report()),
        }
    }
}
