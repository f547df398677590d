//! Per-call overhead of an `async fn` component method (issue 14): a call through a handle
//! versus the same method behind the lock an async program would otherwise hold
//! (`tokio::sync::RwLock`), for `&self` and `&mut self`, on a `current_thread` runtime. Each
//! sample runs its calls inside one `block_on`, so the runtime's own cost is not counted.
//!
//! `cargo bench -p dsu-rt --bench async_call`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

#[dsu::state]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[dsu::component]
impl Counter {
    pub async fn get(&self) -> u64 {
        self.n
    }

    pub async fn add(&mut self, k: u64) -> u64 {
        self.n = self.n.wrapping_add(k);
        self.n
    }
}

impl Counter {
    #[inline(never)]
    async fn get_direct(&self) -> u64 {
        self.n
    }

    #[inline(never)]
    async fn add_direct(&mut self, k: u64) -> u64 {
        self.n = self.n.wrapping_add(k);
        self.n
    }
}

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let handle = dsu::register(Counter::default());
    let locked = Arc::new(tokio::sync::RwLock::new(Counter::default()));
    let mut g = c.benchmark_group("async, 1 thread");
    let mut run = |name: &str, f: &dyn Fn(u64) -> Duration| {
        g.bench_function(name, |b| b.iter_custom(f));
    };
    run("&self direct (tokio RwLock read)", &|iters| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(locked.read().await.get_direct().await);
            }
            t.elapsed()
        })
    });
    run("&self handle", &|iters| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(handle.get().await);
            }
            t.elapsed()
        })
    });
    run("&mut self direct (tokio RwLock write)", &|iters| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(locked.write().await.add_direct(1).await);
            }
            t.elapsed()
        })
    });
    run("&mut self handle", &|iters| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(handle.add(1).await);
            }
            t.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = calls
}
criterion_main!(benches);
