//! The call path in one process: handles, gates, tables, as a program uses them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[dsu::state]
#[derive(Default)]
pub struct Meter {
    n: u64,
    inside: AtomicUsize,
    me: Option<dsu::Handle<Meter>>,
}

#[dsu::component]
impl Meter {
    pub fn bump(&mut self) -> u64 {
        // Exclusive: nobody else may be inside.
        assert_eq!(
            self.inside.fetch_add(1, Ordering::SeqCst),
            0,
            "two calls overlapped"
        );
        self.n += 1;
        self.inside.fetch_sub(1, Ordering::SeqCst);
        self.n
    }

    pub fn get(&self) -> u64 {
        self.n
    }

    /// Waits until `want` callers are inside at once (or gives up after a second).
    pub fn rendezvous(&self, want: usize) -> bool {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut met = false;
        while Instant::now() < deadline {
            if self.inside.load(Ordering::SeqCst) >= want {
                met = true;
                break;
            }
            std::thread::yield_now();
        }
        // Stay until everyone saw it.
        std::thread::sleep(Duration::from_millis(20));
        self.inside.fetch_sub(1, Ordering::SeqCst);
        met
    }

    pub fn fail(&self, msg: String) -> u64 {
        panic!("{msg}");
    }

    pub fn set_me(&mut self, me: dsu::Handle<Meter>) {
        self.me = Some(me);
    }

    pub fn call_myself(&mut self) -> u64 {
        self.me.as_ref().expect("set_me first").get()
    }
}

/// A link of a chain of instances: a call on the first goes down the chain, and the last one
/// calls back into itself through a handle.
#[dsu::state]
#[derive(Default)]
pub struct Link {
    next: Option<dsu::Handle<Link>>,
    back: Option<dsu::Handle<Link>>,
}

#[dsu::component]
impl Link {
    pub fn link(&mut self, next: Option<dsu::Handle<Link>>, back: Option<dsu::Handle<Link>>) {
        self.next = next;
        self.back = back;
    }

    pub fn down(&mut self, shared: bool) -> u64 {
        match (&self.next, &self.back) {
            (Some(n), _) => n.down(shared) + 1,
            (None, Some(b)) if shared => b.peek(),
            (None, Some(b)) => b.poke(),
            (None, None) => 0,
        }
    }

    pub fn peek(&self) -> u64 {
        0
    }

    pub fn poke(&mut self) -> u64 {
        0
    }
}

#[dsu::global]
static HITS: AtomicU64 = AtomicU64::new(0);

fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

#[test]
fn handles_are_clone_send_sync() {
    assert_send_sync_clone::<dsu::Handle<Meter>>();
}

#[test]
fn exclusive_calls_never_overlap() {
    let m = dsu::register(Meter::default());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    m.bump();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(m.get(), 8_000);
}

#[test]
fn shared_calls_run_concurrently() {
    let m = dsu::register(Meter::default());
    let a = {
        let m = m.clone();
        std::thread::spawn(move || m.rendezvous(2))
    };
    let b = m.rendezvous(2);
    assert!(
        a.join().unwrap() && b,
        "two `&self` calls were not inside at the same time"
    );
}

#[test]
fn a_panic_in_a_method_reaches_the_caller_and_releases_the_gate() {
    let m = dsu::register(Meter::default());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.fail("boom".into())));
    let payload = r.unwrap_err();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("boom")
    );
    // The gate was released: an exclusive call gets in.
    assert_eq!(m.bump(), 1);
}

#[test]
fn a_reentrant_call_panics_instead_of_deadlocking() {
    let m = dsu::register(Meter::default());
    m.set_me(m.clone());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.call_myself()));
    let msg = r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("re-entrant call `get`"), "{msg}");
    // The panic unwound out of `call_myself`, a `&mut self` method, so the component is
    // poisoned (as a Mutex held across the panic would be); cleared, it is usable again.
    assert!(dsu::Handle::is_poisoned(&m));
    dsu::Handle::clear_poison(&m);
    assert_eq!(m.bump(), 1);
    // Break the handle cycle so the component can be dropped.
    m.set_me(dsu::register(Meter::default()));
}

#[test]
fn a_reentrant_call_deeper_than_the_tracked_stack_panics_too() {
    // The thread's call stack records 8 nested calls; the 10th link's hold is past them, so
    // only the gate's owner word can tell that the call back into it would deadlock.
    let links: Vec<dsu::Handle<Link>> = (0..10).map(|_| dsu::register(Link::default())).collect();
    for (i, l) in links.iter().enumerate() {
        let back = (i == links.len() - 1).then(|| l.clone());
        l.link(links.get(i + 1).cloned(), back);
    }
    for shared in [false, true] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| links[0].down(shared)));
        let msg = r.unwrap_err().downcast::<String>().unwrap();
        let method = if shared { "peek" } else { "poke" };
        assert!(
            msg.contains(&format!("re-entrant call `{method}`")),
            "{msg}"
        );
        for l in &links {
            dsu::Handle::clear_poison(l);
        }
    }
    // Every gate was released as the panic unwound: the chain runs end to end without the
    // call back.
    links[9].link(None, None);
    assert_eq!(links[0].down(false), 9);
    for l in &links {
        l.link(None, None);
    }
}

#[test]
fn handles_report_identity_and_version() {
    let m = dsu::register(Meter::default());
    assert_eq!(dsu::Handle::id(&m), "Meter");
    assert_eq!(dsu::Handle::version(&m), 1);
}

#[test]
fn a_global_is_one_instance() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| HITS.fetch_add(1, Ordering::SeqCst)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(HITS.load(Ordering::SeqCst), 4);
}

#[test]
fn a_registered_thread_passes_update_points_when_no_update_waits() {
    let reg = dsu::register_thread();
    let m = dsu::register(Meter::default());
    for _ in 0..1000 {
        m.bump();
        dsu::update_point!();
    }
    assert_eq!(m.get(), 1000);
    drop(reg);
    // Registering twice on one thread is a programming error, reported as such.
    let _a = dsu::register_thread();
    let r = std::panic::catch_unwind(dsu::register_thread);
    assert!(
        r.is_err(),
        "a second registration of the same thread was accepted"
    );
}
