//! Case `field_renamed`: in v2 the field `count` of the `Tally` component's state is renamed
//! `total` (same type), marked `#[dsu::renamed_from("count")]`, and the methods use the new
//! name. Expected: category 1 (one component; the value moves to the renamed field).

#[dsu::state]
#[derive(Default)]
pub struct Tally {
    label: String,
    count: u64,
}

#[dsu::component]
impl Tally {
    pub fn label(&mut self, label: String) {
        self.label = label;
    }

    pub fn add(&mut self, n: u64) -> u64 {
        self.count += n;
        self.count
    }

    pub fn show(&self) -> String {
        format!("{}: {}", self.label, self.count)
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let tally = rt.register(Tally::default());
    tally.label("votes".to_string());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        match line.trim().parse() {
            Ok(n) => println!("{}", tally.add(n)),
            Err(_) => println!("{}", tally.show()),
        }
    }
}
