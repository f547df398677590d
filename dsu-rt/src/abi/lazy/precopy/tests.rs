//! The pre-copy of a map, both sides in one process.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::super::mirror::{discard_mirrors, receiving};
use super::super::LazyMap;
use super::{new_epoch, sending, Batch, Mode};

fn encode<T: Serialize>(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
    v.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(|e| e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(b).map_err(|e| e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The mirrors are the process's: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Serialize, Deserialize, Default)]
struct State {
    map: LazyMap<String, Vec<u32>>,
    other: LazyMap<u32, String>,
    n: u64,
}

fn save(s: &State) -> Vec<u8> {
    let mut out = Vec::new();
    encode(s, &mut out).unwrap();
    out
}

fn batch(s: &State, epoch: u64, budget: usize) -> (Vec<u8>, Batch) {
    sending(Mode::Batch, epoch, budget, || save(s))
}

fn apply(bytes: &[u8], last: bool) -> State {
    receiving(last, || decode::<State>(bytes)).unwrap()
}

fn same(a: &State, b: &State) {
    assert_eq!(a.map, b.map);
    assert_eq!(a.other, b.other);
    assert_eq!(a.n, b.n);
}

/// Batches while the map is written (values changed, keys removed and added in reused slots,
/// one map cleared), then the last slots: the mirror is the map.
#[test]
fn batches_then_the_last_slots_rebuild_the_map_written_meanwhile() {
    let _one = lock(&SERIAL);
    let mut s = State::default();
    for i in 0..5000u32 {
        s.map.insert(format!("k{i}"), vec![i; (i % 5) as usize]);
        s.other.insert(i, i.to_string());
    }
    let epoch = new_epoch();
    let mut step = 0u32;
    loop {
        let (bytes, b) = batch(&s, epoch, 700);
        let partial = apply(&bytes, false);
        assert!(partial.map.is_empty(), "a batch's maps stand for nothing");
        assert_eq!(b.maps, 2);
        // Writes between batches, into slots sent and not.
        step += 1;
        for j in 0..300u32 {
            let i = (step * 977 + j * 31) % 7000;
            match j % 4 {
                0 => drop(s.map.remove(&format!("k{i}"))),
                1 => drop(s.map.insert(format!("k{i}"), vec![step, j])),
                2 => {
                    if let Some(v) = s.map.get_mut(&format!("k{i}")) {
                        v.push(99);
                    }
                }
                _ => drop(s.map.insert(format!("new{step}-{j}"), vec![])),
            }
        }
        s.n += 1;
        if step == 4 {
            s.other.clear();
            s.other.insert(7, "seven".into());
        }
        if b.left == 0 && step > 6 {
            break;
        }
        assert!(step < 100, "the batches did not come to an end");
    }
    let (last, b) = sending(Mode::Final, epoch, 0, || save(&s));
    assert!(
        b.sent < 2000,
        "the pause sends what changed since, not the map ({})",
        b.sent
    );
    let got = apply(&last, true);
    same(&s, &got);
    assert_eq!(discard_mirrors(), 0);
    // The mirror is a working map: its free list was rebuilt.
    let mut got = got;
    for i in 0..100 {
        got.map.insert(format!("after{i}"), vec![i]);
    }
    assert_eq!(got.map.len(), s.map.len() + 100);
    // A forgotten track goes: the next hand-off starts over.
    sending(Mode::Forget, epoch, 0, || save(&s));
    assert!(s.map.track.load(Ordering::Relaxed).is_null());
}

/// A map the pause meets without a track of this hand-off goes whole; another thread's
/// serialization meanwhile sees the plain form.
#[test]
fn maps_not_sent_go_whole_and_other_threads_see_plain_maps() {
    let _one = lock(&SERIAL);
    let mut s = State::default();
    s.map.insert("a".into(), vec![1]);
    let epoch = new_epoch();
    let (bytes, _) = sending(Mode::Batch, epoch, 10, || {
        let other = std::thread::scope(|sc| sc.spawn(|| save(&s)).join().unwrap());
        let plain: State = decode(&other).unwrap();
        assert_eq!(plain.map.get("a"), Some(&vec![1]));
        save(&s)
    });
    drop(apply(&bytes, false));
    s.other.insert(1, "x".into());
    s.other = LazyMap::new();
    s.other.insert(2, "y".into());
    let (last, _) = sending(Mode::Final, new_epoch(), 0, || save(&s));
    let got = apply(&last, true);
    same(&s, &got);
    discard_mirrors();
}
