//! Case `body_only`: v2 changes only the body of `Account::withdraw` (a bug fix: the balance
//! saturates at zero instead of underflowing). Code only; expected: category 1 (one component).

#[dsu::state]
#[derive(Default)]
pub struct Account {
    balance: u64,
}

#[dsu::component]
impl Account {
    pub fn deposit(&mut self, amount: u64) -> u64 {
        self.balance += amount;
        self.balance
    }

    pub fn withdraw(&mut self, amount: u64) -> u64 {
        self.balance = self.balance.saturating_sub(amount);
        self.balance
    }

    pub fn balance(&self) -> u64 {
        self.balance
    }
}

fn main() {
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(concat!(env!("CARGO_PKG_NAME"), ".sock"))
        .start()
        .expect("start the dsu runtime");
    let account = rt.register(Account::default());
    for line in std::io::stdin().lines() {
        let line = line.expect("read stdin");
        let (cmd, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let amount = arg.trim().parse().unwrap_or(0);
        let balance = match cmd {
            "deposit" => account.deposit(amount),
            "withdraw" => account.withdraw(amount),
            _ => account.balance(),
        };
        println!("{balance}");
    }
}
