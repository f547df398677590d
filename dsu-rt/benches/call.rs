//! Per-call overhead: a call through a component handle versus the same method called directly
//! under the lock a program would otherwise hold (`RwLock`), for `&self` and `&mut self`, on
//! one thread and on two.
//!
//! `cargo bench -p dsu-rt --bench call`

use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub fn get(&self) -> u64 {
        self.n
    }

    pub fn add(&mut self, k: u64) -> u64 {
        self.n = self.n.wrapping_add(k);
        self.n
    }
}

impl Counter {
    #[inline(never)]
    fn get_direct(&self) -> u64 {
        self.n
    }

    #[inline(never)]
    fn add_direct(&mut self, k: u64) -> u64 {
        self.n = self.n.wrapping_add(k);
        self.n
    }
}

/// The handle call, out of line so that its code can be read in a disassembly.
#[inline(never)]
fn handle_get(h: &dsu::Handle<Counter>) -> u64 {
    h.get()
}

/// As `handle_get`, for `&mut self`.
#[inline(never)]
fn handle_add(h: &dsu::Handle<Counter>, k: u64) -> u64 {
    h.add(k)
}

/// Runs `f` `iters` times on each of `threads` threads at once; returns the wall time.
fn parallel(threads: usize, iters: u64, f: impl Fn() + Send + Sync + 'static) -> Duration {
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (f, start) = (f.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..iters {
                    f();
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    t.elapsed()
}

fn calls(c: &mut Criterion) {
    let handle = dsu::register(Counter::default());
    let locked = Arc::new(RwLock::new(Counter::default()));

    let mut g = c.benchmark_group("1 thread");
    g.throughput(Throughput::Elements(1));
    // Control: the method with no lock at all, to show what this machine's two cores give a
    // loop that shares nothing.
    let plain = Arc::new(Counter::default());
    {
        let plain = plain.clone();
        g.bench_function("&self direct, no lock (control)", move |b| {
            b.iter(|| black_box(plain.get_direct()))
        });
    }
    g.bench_function("&self direct (RwLock read)", |b| {
        b.iter(|| black_box(locked.read().unwrap().get_direct()))
    });
    g.bench_function("&self handle", |b| {
        b.iter(|| black_box(handle_get(&handle)))
    });
    g.bench_function("&mut self direct (RwLock write)", |b| {
        b.iter(|| black_box(locked.write().unwrap().add_direct(black_box(1))))
    });
    g.bench_function("&mut self handle", |b| {
        b.iter(|| black_box(handle_add(&handle, black_box(1))))
    });
    g.finish();

    // Two threads at once: throughput counts both threads' calls.
    let mut g = c.benchmark_group("2 threads");
    g.throughput(Throughput::Elements(2));
    g.bench_function("&self direct, no lock (control)", move |b| {
        let plain = plain.clone();
        b.iter_custom(move |iters| {
            let p = plain.clone();
            parallel(2, iters, move || {
                black_box(p.get_direct());
            })
        })
    });
    {
        let locked = locked.clone();
        g.bench_function("&self direct (RwLock read)", move |b| {
            let locked = locked.clone();
            b.iter_custom(move |iters| {
                let l = locked.clone();
                parallel(2, iters, move || {
                    black_box(l.read().unwrap().get_direct());
                })
            })
        });
    }
    {
        let h = handle.clone();
        g.bench_function("&self handle", move |b| {
            let h = h.clone();
            b.iter_custom(move |iters| {
                let h = h.clone();
                parallel(2, iters, move || {
                    black_box(handle_get(&h));
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = calls
}
criterion_main!(benches);
