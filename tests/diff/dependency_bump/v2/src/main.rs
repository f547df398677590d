//! Case `dependency_bump`: v2 depends on `itoa = "=1.0.11"` instead of `"=1.0.10"`; the code
//! is identical. Expected: refused (a dependency's version changes: category 6, the
//! environment/toolchain/dependencies).

#[dsu::state]
#[derive(Default)]
pub struct Ids {
    next: u64,
}

#[dsu::component]
impl Ids {
    pub fn issue(&mut self, prefix: &str) -> String {
        self.next += 1;
        let mut buf = itoa::Buffer::new();
        format!("{prefix}-{}", buf.format(self.next))
    }

    pub fn issued(&self) -> String {
        itoa::Buffer::new().format(self.next).to_string()
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let ids = rt.register(Ids::default());
    for line in std::io::stdin().lines() {
        let prefix = line.expect("read stdin");
        println!("{}", ids.issue(prefix.trim()));
    }
    eprintln!("{} ids issued", ids.issued());
}
