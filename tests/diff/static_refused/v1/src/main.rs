//! Case `static_refused`: in v2 `Greeter::greet` counts greetings in a plain (non-dsu)
//! `static COUNTER: AtomicU64`, and `Tokens::issue` counts tokens per thread in a
//! `thread_local!`; both are added in v2. Expected: refused (a static that is not a
//! `#[dsu::global]` is reachable from changed code: the patch would get its own copy).

#[dsu::state]
#[derive(Default)]
pub struct Greeter {
    greeted: Vec<String>,
}

#[dsu::component]
impl Greeter {
    pub fn greet(&mut self, name: String) -> String {
        let reply = format!("hello {name}");
        self.greeted.push(name);
        reply
    }

    pub fn count(&self) -> usize {
        self.greeted.len()
    }
}

#[dsu::state]
#[derive(Default)]
pub struct Tokens {
    next: u64,
}

#[dsu::component]
impl Tokens {
    pub fn issue(&mut self) -> String {
        self.next += 1;
        format!("tok-{}", self.next)
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let greeter = rt.register(Greeter::default());
    let tokens = rt.register(Tokens::default());
    for line in std::io::stdin().lines() {
        let name = line.expect("read stdin");
        println!("{} [{}]", greeter.greet(name), tokens.issue());
    }
    eprintln!("{} greeted", greeter.count());
}
