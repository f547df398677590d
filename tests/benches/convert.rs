//! The floor under a type-changing state transfer: converting the same map without dsu.
//!
//! kvstore's `Keyspace` is a `HashMap<Vec<u8>, Entry>`; its v2→v3 update adds a field to
//! `Entry`, so every entry is converted and the map is rebuilt. This benchmark does the same
//! conversion in plain Rust, two ways:
//! - **clone:** from a borrowed map, cloning keys and values, as dsu's generated transfer does
//!   (a transfer borrows the old state, so that a failed update can roll back to it);
//! - **move:** from an owned map, moving keys and values, which no rollback could undo.
//!
//! Both rebuild the hash table, which dominates at 10^6 entries. Compare with the transfer
//! times of `cargo bench -p dsu-tests --bench pause`, measured on the same machine.
//!
//! `cargo bench -p dsu-tests --bench convert [-- --sizes 1000,1000000 --reps 5]`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// v2's entry.
struct OldEntry {
    value: Vec<u8>,
}

/// v3's entry: one field more (never read: the benchmark only builds it).
#[allow(dead_code)]
struct NewEntry {
    value: Vec<u8>,
    expires_at: Option<u64>,
}

/// The same keys and values the pause benchmark loads.
fn keyspace(n: usize) -> HashMap<Vec<u8>, OldEntry> {
    (0..n)
        .map(|i| {
            (
                format!("key:{i:012}").into_bytes(),
                OldEntry {
                    value: b"xxx".to_vec(),
                },
            )
        })
        .collect()
}

fn by_clone(old: &HashMap<Vec<u8>, OldEntry>) -> HashMap<Vec<u8>, NewEntry> {
    old.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                NewEntry {
                    value: v.value.clone(),
                    expires_at: None,
                },
            )
        })
        .collect()
}

fn by_move(old: HashMap<Vec<u8>, OldEntry>) -> HashMap<Vec<u8>, NewEntry> {
    old.into_iter()
        .map(|(k, v)| {
            (
                k,
                NewEntry {
                    value: v.value,
                    expires_at: None,
                },
            )
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut sizes = vec![1_000, 10_000, 100_000, 1_000_000];
    let mut reps = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                let v = args.next().expect("--sizes N,N,...");
                sizes = v
                    .split(',')
                    .map(|s| s.parse().expect("--sizes takes numbers"))
                    .collect();
            }
            "--reps" => reps = args.next().and_then(|s| s.parse().ok()).expect("--reps N"),
            // cargo bench passes `--bench`.
            _ => {}
        }
    }
    println!(
        "| entries | clone (as dsu's transfer) | move | clone / move |\n|---:|---:|---:|---:|"
    );
    for n in sizes {
        let (mut c, mut m) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let old = keyspace(n);
            let t = Instant::now();
            let new = by_clone(&old);
            c.push(t.elapsed());
            black_box(new);
            let t = Instant::now();
            let new = by_move(old);
            m.push(t.elapsed());
            black_box(new);
        }
        let (c, m) = (median(c), median(m));
        println!(
            "| {n} | {:.3} ms | {:.3} ms | {:.2}× |",
            ms(c),
            ms(m),
            c.as_secs_f64() / m.as_secs_f64()
        );
    }
}
