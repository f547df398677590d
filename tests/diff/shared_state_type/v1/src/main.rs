//! Case `shared_state_type`: the `#[dsu::state]` struct `config::Config` (not a component) is
//! a field type in the states of two components, `Logger` and `Mailer`. In v2 `Config` gains a
//! field `retries: u32` (read by `Mailer::send`). Expected: category 3 (data shared by several
//! components: both are updated together).

mod config;

use config::Config;

#[dsu::state]
#[derive(Default)]
pub struct Logger {
    config: Config,
    lines: Vec<String>,
}

#[dsu::component]
impl Logger {
    pub fn configure(&mut self, verbose: bool) {
        self.config.verbose = verbose;
    }

    pub fn log(&mut self, msg: String) -> usize {
        if self.config.verbose {
            eprintln!("log: {msg}");
        }
        self.lines.push(msg);
        self.lines.len()
    }
}

#[dsu::state]
#[derive(Default)]
pub struct Mailer {
    config: Config,
    sent: u64,
}

#[dsu::component]
impl Mailer {
    pub fn configure(&mut self, verbose: bool) {
        self.config.verbose = verbose;
    }

    pub fn send(&mut self, to: String) -> String {
        self.sent += 1;
        if self.config.verbose {
            eprintln!("sending mail #{} to {to}", self.sent);
        }
        format!("mail #{} to {to}", self.sent)
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let logger = rt.register(Logger::default());
    let mailer = rt.register(Mailer::default());
    let verbose = std::env::var_os("VERBOSE").is_some();
    logger.configure(verbose);
    mailer.configure(verbose);
    for line in std::io::stdin().lines() {
        let to = line.expect("read stdin");
        let reply = mailer.send(to.trim().to_string());
        let n = logger.log(reply.clone());
        println!("{reply} (log line {n})");
    }
}
