//! Case `field_type_container`: in v2 two fields of the `Meter` component's state widen through
//! a container: `readings: Vec<u32>` -> `Vec<u64>` and `limit: Option<u16>` -> `Option<u32>`
//! (each element converts with `From`); the methods' signatures stay the same. Expected:
//! category 1 (one component; automatic conversion through the containers).

#[dsu::state]
#[derive(Default)]
pub struct Meter {
    readings: Vec<u32>,
    limit: Option<u16>,
}

#[dsu::component]
impl Meter {
    pub fn record(&mut self, v: u32) -> usize {
        self.readings.push(v);
        self.readings.len()
    }

    pub fn set_limit(&mut self, limit: u16) {
        self.limit = Some(limit);
    }

    pub fn over_limit(&self) -> usize {
        let limit = self.limit.unwrap_or(u16::MAX);
        self.readings
            .iter()
            .filter(|&&r| r > u32::from(limit))
            .count()
    }

    pub fn sum(&self) -> u64 {
        self.readings.iter().map(|&r| u64::from(r)).sum()
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let meter = rt.register(Meter::default());
    meter.set_limit(1000);
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        match line.trim().parse() {
            Ok(v) => println!("{} readings", meter.record(v)),
            Err(_) => println!("sum {}, {} over limit", meter.sum(), meter.over_limit()),
        }
    }
}
