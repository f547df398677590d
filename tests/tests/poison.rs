//! A panic inside a component method behaves as the same panic would without dsu: the
//! caller's thread unwinds, the process goes on, and a panic in a `&mut self` method poisons
//! the component the way it poisons a `Mutex` (later calls panic until the program clears it).

use std::panic::{catch_unwind, AssertUnwindSafe};

#[dsu::state]
#[derive(Default)]
pub struct Account {
    balance: i64,
    log: Vec<i64>,
}

#[dsu::component]
impl Account {
    /// Panics half-way through a change when asked to go below zero.
    pub fn withdraw(&mut self, amount: i64) -> i64 {
        self.log.push(-amount);
        assert!(
            self.balance >= amount,
            "overdrawn by {}",
            amount - self.balance
        );
        self.balance -= amount;
        self.balance
    }

    pub fn deposit(&mut self, amount: i64) -> i64 {
        self.log.push(amount);
        self.balance += amount;
        self.balance
    }

    pub fn balance(&self) -> i64 {
        self.balance
    }

    /// Panics without changing anything.
    pub fn audit(&self) -> usize {
        assert!(self.log.len() < 3, "audit: too many entries");
        self.log.len()
    }
}

fn message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn a_panic_in_a_mut_method_poisons_the_component_like_a_mutex() {
    let account = dsu::register(Account::default());
    assert_eq!(account.deposit(10), 10);

    // A panic in a `&self` method reaches the caller and poisons nothing.
    assert_eq!(account.deposit(1), 11);
    assert_eq!(account.deposit(0), 11);
    let p = catch_unwind(AssertUnwindSafe(|| account.audit())).unwrap_err();
    assert!(message(p).contains("too many entries"));
    assert!(!dsu::Handle::is_poisoned(&account));
    assert_eq!(account.balance(), 11);

    // A panic in a `&mut self` method reaches the caller with its own message...
    let p = catch_unwind(AssertUnwindSafe(|| account.withdraw(50))).unwrap_err();
    assert!(message(p).contains("overdrawn by 39"));
    // ...and poisons the component: every later call panics, naming the method that did.
    assert!(dsu::Handle::is_poisoned(&account));
    for call in [
        &(|| {
            account.balance();
        }) as &dyn Fn(),
        &|| {
            account.deposit(1);
        },
    ] {
        let p = catch_unwind(AssertUnwindSafe(call)).unwrap_err();
        let m = message(p);
        assert!(
            m.contains("component `Account` is poisoned") && m.contains("`withdraw`"),
            "{m}"
        );
    }
    // From another thread too, and the gate is not left held by the panics.
    let other = account.clone();
    let r = std::thread::spawn(move || other.balance()).join();
    assert!(r.is_err());

    // The program decides the state is fine (the balance was not changed) and clears it.
    dsu::Handle::clear_poison(&account);
    assert_eq!(account.balance(), 11);
    assert_eq!(account.deposit(4), 15);
    let other = account.clone();
    assert_eq!(
        std::thread::spawn(move || other.withdraw(5))
            .join()
            .unwrap(),
        10
    );
}
