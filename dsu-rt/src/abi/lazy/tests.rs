//! The map's unit tests: plain operations, and a type change converted, rolled back and committed.

use super::*;
use std::sync::atomic::AtomicIsize;

/// Values alive: a double drop or a leak shows in the count.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Tracked(String);
impl Tracked {
    fn new(s: String) -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Tracked(s)
    }
}
impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

struct A {
    name: Tracked,
    gone: Tracked,
}
struct B {
    name: Tracked,
    score: u32,
}

// The generated functions of a type change A -> B that moves `name`, drops `gone` and
// defaults `score`.
unsafe fn move_convert(a: &A) -> B {
    B {
        // SAFETY: taken over bitwise; `release` leaves it alone.
        name: unsafe { ptr::read(&a.name) },
        score: a.name.0.len() as u32,
    }
}
unsafe fn release(a: *mut A) {
    // SAFETY: `gone` was not taken over.
    unsafe { ptr::drop_in_place(ptr::addr_of_mut!((*a).gone)) };
}
unsafe fn give_up(_: *mut B) {}
static STEP: LazyStep = LazyStep {
    peek: {
        unsafe fn peek(p: *const ()) -> *mut () {
            // SAFETY: a box of A.
            unsafe { lazy_peek::<A, B>(p, move_convert) }
        }
        peek
    },
    release_old: {
        unsafe fn r(p: *mut ()) {
            // SAFETY: a box of A taken from.
            unsafe { lazy_free::<A>(p, release) }
        }
        r
    },
    discard_new: {
        unsafe fn d(p: *mut ()) {
            // SAFETY: a box of B made by peek.
            unsafe { lazy_free::<B>(p, give_up) }
        }
        d
    },
    drop_old: lazy_drop::<A>,
};

fn old_map(n: usize) -> LazyMap<String, A> {
    (0..n)
        .map(|i| {
            let a = A {
                name: Tracked::new(format!("name-{i}")),
                gone: Tracked::new(format!("gone-{i}")),
            };
            (format!("k{i}"), a)
        })
        .collect()
}

// One test, so that the live count is not shared with another running at the same time.
#[test]
fn a_type_change_converts_on_access_and_in_batches_and_a_rollback_leaves_the_old_map() {
    LIVE.store(0, Ordering::SeqCst);
    {
        // Plain map operations.
        let mut m: LazyMap<String, Tracked> = LazyMap::new();
        for i in 0..100 {
            m.insert(format!("k{i}"), Tracked::new(format!("v{i}")));
        }
        assert_eq!(
            m.insert("k1".into(), Tracked::new("again".into()))
                .map(|t| t.0.clone()),
            Some("v1".into())
        );
        assert_eq!(m.remove("k2").map(|t| t.0.clone()), Some("v2".into()));
        assert!(m.get("k2").is_none());
        m.insert("k2".into(), Tracked::new("reused".into()));
        m.retain(|k, _| k != "k3");
        assert_eq!(m.len(), 99);
        assert_eq!(m.get("k2").unwrap().0, "reused");
        assert_eq!(m.iter().count(), 99);
        m.get_mut("k4").unwrap().0.push('!');
        assert_eq!(m.get("k4").unwrap().0, "v4!");
    }
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        0,
        "plain map: leak or double drop"
    );

    // Rolled back: the new map read some entries (a health check), then was dropped.
    let old = old_map(1000);
    {
        // SAFETY: STEP converts A to B; the new map is dropped in probation.
        let new: LazyMap<String, B> = unsafe { LazyMap::adopt(&old, &STEP) };
        assert_eq!(new.get("k7").unwrap().name.0, "name-7");
        assert_eq!(new.get("k7").unwrap().score, 6);
        assert_eq!(new.unconverted(), 1000);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut n = new;
            n.insert(
                "x".into(),
                B {
                    name: Tracked::new("x".into()),
                    score: 0,
                },
            );
        }));
        assert!(r.is_err(), "a write in probation is refused");
    }
    assert_eq!(old.len(), 1000);
    assert_eq!(old.get("k7").unwrap().gone.0, "gone-7");
    assert_eq!(LIVE.load(Ordering::SeqCst), 2000, "the old map is whole");

    // Committed: some entries read before the commit, some by calls after, the rest in
    // batches.
    // SAFETY: STEP converts A to B; the old map is forgotten once the new one settled.
    let mut new: LazyMap<String, B> = unsafe { LazyMap::adopt(&old, &STEP) };
    assert_eq!(new.get("k9").unwrap().name.0, "name-9");
    new.settle();
    // SAFETY: the new map settled and owns the table.
    unsafe { old.forget() };
    assert_eq!(new.unconverted(), 999);
    assert_eq!(new.get("k10").unwrap().score, 7);
    assert_eq!(new.get_mut("k11").unwrap().name.0, "name-11");
    assert_eq!(new.remove("k12").unwrap().name.0, "name-12");
    new.insert(
        "fresh".into(),
        B {
            name: Tracked::new("fresh".into()),
            score: 1,
        },
    );
    assert_eq!(new.unconverted(), 996);
    let mut batches = 0;
    while new.convert_some(100) > 0 {
        batches += 1;
    }
    assert!(batches >= 9, "{batches} batches");
    assert_eq!(new.unconverted(), 0);
    for i in (0..1000).filter(|&i| i != 12) {
        let b = new.get(&format!("k{i}")).unwrap();
        assert_eq!(b.name.0, format!("name-{i}"));
    }
    // The removed fields were freed: one name per entry is left (999 + fresh).
    assert_eq!(LIVE.load(Ordering::SeqCst), 1000);

    // Taken over and given up with nothing read: the old map frees itself whole.
    let mut again: LazyMap<String, A> = (0..10)
        .map(|i| {
            (
                format!("k{i}"),
                A {
                    name: Tracked::new("n".into()),
                    gone: Tracked::new("g".into()),
                },
            )
        })
        .collect();
    // SAFETY: STEP converts A to B; dropped in probation, the old map is left whole.
    let half: LazyMap<String, B> = unsafe { LazyMap::adopt(&again, &STEP) };
    drop(half);
    again.clear();
    drop(again);
    drop(new);
    assert_eq!(LIVE.load(Ordering::SeqCst), 0, "leak or double drop");
}
