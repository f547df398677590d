//! `async fn` component methods, called through handles on tokio runtimes (issue 14, items 1
//! and 2): exclusion across `.await`s, waiting through the waker (a `current_thread` runtime
//! keeps running other tasks while one waits at a gate), nested calls, cancellation, panics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Mutex as TokioMutex};

/// Where a test keeps the receiver `Account::hold` waits on.
type Release = Arc<TokioMutex<Option<oneshot::Receiver<()>>>>;

#[dsu::state]
#[derive(Default)]
pub struct Account {
    balance: u64,
    inside: AtomicUsize,
    /// Where `hold` waits, once a test has put a receiver here.
    #[serde(skip)]
    gate: Release,
}

#[dsu::component]
impl Account {
    /// Adds `k` in two steps with an `.await` between them: exclusive across the `.await`.
    pub async fn deposit(&mut self, k: u64) -> u64 {
        assert_eq!(self.inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
        let before = self.balance;
        tokio::task::yield_now().await;
        self.balance = before + k;
        self.inside.fetch_sub(1, Ordering::SeqCst);
        self.balance
    }

    pub async fn balance(&self) -> u64 {
        tokio::task::yield_now().await;
        self.balance
    }

    /// A sync method of the same component.
    pub fn peek(&self) -> u64 {
        self.balance
    }

    /// Holds the component exclusively until the test sends on the channel it installed.
    pub async fn hold(&mut self) -> String {
        let rx = self.gate.lock().await.take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        "released".to_string()
    }

    /// Never completes on its own.
    pub async fn forever(&mut self) {
        std::future::pending::<()>().await
    }

    pub async fn fail(&mut self) {
        tokio::task::yield_now().await;
        panic!("deposit failed");
    }

    pub async fn fail_shared(&self) {
        panic!("read failed");
    }
}

/// Calls another component from inside an async method.
#[dsu::state]
pub struct Teller {
    account: dsu::Handle<Account>,
}

#[dsu::component]
impl Teller {
    pub async fn pay_in(&self, k: u64) -> String {
        let b = self.account.deposit(k).await;
        format!("balance {b}")
    }
}

fn account() -> (dsu::Handle<Account>, Release) {
    let gate = Arc::new(TokioMutex::new(None));
    let h = dsu::register(Account {
        gate: gate.clone(),
        ..Account::default()
    });
    (h, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mut_self_calls_exclude_each_other_across_awaits() {
    let (h, _) = account();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.deposit(1).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(h.balance().await, 200);
    assert_eq!(h.peek(), 200);
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_task_does_not_block_the_thread() {
    let (h, gate) = account();
    let (tx, rx) = oneshot::channel();
    *gate.lock().await = Some(rx);
    // `hold` takes the component exclusively and waits for `tx`.
    let holder = tokio::spawn({
        let h = h.clone();
        async move { h.hold().await }
    });
    tokio::task::yield_now().await;
    // This caller is kept out; on a current_thread runtime a parked thread would never get
    // to send on `tx` below.
    let reader = tokio::spawn({
        let h = h.clone();
        async move { h.balance().await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!reader.is_finished(), "the reader waits for the holder");
    tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap(), "released");
    assert_eq!(reader.await.unwrap(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_from_inside_an_async_method_reaches_the_other_component() {
    let (account, _) = account();
    let teller = dsu::register(Teller {
        account: account.clone(),
    });
    assert_eq!(teller.pay_in(5).await, "balance 5");
    assert_eq!(account.balance().await, 5);
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_call_frees_the_component_and_does_not_poison_it() {
    let (h, _) = account();
    let r = tokio::time::timeout(Duration::from_millis(20), h.forever()).await;
    assert!(r.is_err(), "`forever` never completes");
    assert!(!dsu::Handle::is_poisoned(&h));
    // The gate was left when the future was dropped: this would wait forever otherwise.
    let b = tokio::time::timeout(Duration::from_secs(5), h.deposit(3)).await;
    assert_eq!(b.expect("the component is free"), 3);
}

// Under `dsu_off` the state is behind tokio's lock, which does not poison.
#[cfg_attr(dsu_off, ignore = "tokio's lock does not poison")]
#[tokio::test(flavor = "current_thread")]
async fn a_panic_in_an_async_mut_self_call_poisons_and_one_in_a_shared_call_does_not() {
    let (h, _) = account();
    let shared = tokio::spawn({
        let h = h.clone();
        async move { h.fail_shared().await }
    })
    .await;
    assert!(shared.unwrap_err().is_panic());
    assert!(!dsu::Handle::is_poisoned(&h));
    let e = tokio::spawn({
        let h = h.clone();
        async move { h.fail().await }
    })
    .await
    .unwrap_err();
    let msg = e.into_panic();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"deposit failed"));
    assert!(dsu::Handle::is_poisoned(&h));
    let later = tokio::spawn({
        let h = h.clone();
        async move { h.balance().await }
    })
    .await
    .unwrap_err()
    .into_panic();
    let later = later.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(later.contains("is poisoned"), "{later}");
    dsu::Handle::clear_poison(&h);
    assert_eq!(h.balance().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_async_callers_share_one_gate() {
    let (h, gate) = account();
    let (tx, rx) = oneshot::channel();
    *gate.lock().await = Some(rx);
    let holder = tokio::spawn({
        let h = h.clone();
        async move { h.hold().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A sync caller on a plain thread parks until the async holder is done.
    let sync = std::thread::spawn({
        let h = h.clone();
        move || h.peek()
    });
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !sync.is_finished(),
        "the sync caller waits for the async holder"
    );
    tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap(), "released");
    assert_eq!(sync.join().unwrap(), 0);
}
