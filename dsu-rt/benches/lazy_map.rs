//! What a `dsu::LazyMap` costs in normal operation (no update running), against the
//! `std::collections::HashMap` it replaces: a read of a present key, an overwrite of one, and
//! an insert of a new key followed by its removal, at 10^5 entries of kvstore's shape
//! (`Vec<u8>` keys and values).
//!
//! `cargo bench -p dsu-rt --bench lazy_map`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dsu::LazyMap;

const N: usize = 100_000;

fn key(i: usize) -> Vec<u8> {
    format!("key:{i:06}").into_bytes()
}

fn keys() -> Vec<Vec<u8>> {
    // A fixed pseudo-random order, so neither map is read in its own table order.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            key((x % N as u64) as usize)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let std_map: HashMap<Vec<u8>, Vec<u8>> = (0..N).map(|i| (key(i), b"value".to_vec())).collect();
    let mut lazy: LazyMap<Vec<u8>, Vec<u8>> = (0..N).map(|i| (key(i), b"value".to_vec())).collect();
    let probe = keys();
    let mut g = c.benchmark_group("lazy_map");

    let mut i = 0;
    g.bench_function("get/HashMap", |b| {
        b.iter(|| {
            i = (i + 1) % probe.len();
            black_box(std_map.get(&probe[i]).map(|v| v.len()))
        })
    });
    g.bench_function("get/LazyMap", |b| {
        b.iter(|| {
            i = (i + 1) % probe.len();
            black_box(lazy.get(&probe[i]).map(|v| v.len()))
        })
    });

    let mut std_mut = std_map.clone();
    g.bench_function("get_mut/HashMap", |b| {
        b.iter(|| {
            i = (i + 1) % probe.len();
            if let Some(v) = std_mut.get_mut(&probe[i]) {
                v[0] ^= 1;
            }
        })
    });
    g.bench_function("get_mut/LazyMap", |b| {
        b.iter(|| {
            i = (i + 1) % probe.len();
            if let Some(v) = lazy.get_mut(&probe[i]) {
                v[0] ^= 1;
            }
        })
    });

    g.bench_function("insert+remove/HashMap", |b| {
        b.iter_batched(
            || b"fresh-key".to_vec(),
            |k| {
                std_mut.insert(k.clone(), b"v".to_vec());
                black_box(std_mut.remove(&k))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("insert+remove/LazyMap", |b| {
        b.iter_batched(
            || b"fresh-key".to_vec(),
            |k| {
                lazy.insert(k.clone(), b"v".to_vec());
                black_box(lazy.remove(&k))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
