//! A [`LazyMap`] in a pre-copying hand-off (DESIGN.md §8, "Pre-copy"): the old process streams
//! the map while it serves, a bounded batch of slots at a time with the component held, and the
//! map records the slots written after they were sent; inside the pause only those (and the
//! slots never sent) go. The new process keeps a *mirror* of each map, slot for slot, and
//! applies every batch to it as it arrives; the pause's stream names the mirror and carries the
//! last slots.
//!
//! Both sides go through the map's serde traits, so a map anywhere in a state (a field, a
//! field's field) takes part without generated code: while the hand-off serializes a state on
//! its thread, in a mode set here, a map writes its *delta* form (`[MAGIC, id, cleared,
//! [[slot, [key, value] | nil], ...]]`) instead of the whole map; while the new process reads a
//! state, a delta form is applied to the mirror it names. Anything else (another thread, a map
//! inside a map's values, a `serde_json` copy) sees the plain map form.
//!
//! What the map cannot see: a value changed through `&self` (interior mutability, a
//! `LazyMap<K, Mutex<V>>`) after it was sent. Such a change reaches the new process only if the
//! slot is written again; the state's other fields go whole in the pause, as before.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{LazyMap, Slot};
use crate::abi::shared::Shared;

/// The first element of a delta form, apart from any key a plain map could start with (a map is
/// written as a map, a delta as a sequence; this checks a sequence is ours).
const MAGIC: u64 = 0x6473_752d_7072_6563;

/// What a hand-off has sent of one map.
pub(crate) struct Track {
    /// The map's number, unique in the process.
    id: u64,
    /// The hand-off that sent it (a failed one leaves nothing the next may trust).
    epoch: u64,
    /// Slots below this were sent once (the first pass's progress).
    sent: usize,
    /// The map was cleared since the last batch: the mirror must be too.
    cleared: bool,
    /// Slots below `sent` written since they were sent, each once (`marked`).
    dirty: Vec<usize>,
    marked: Vec<u64>,
}

impl Track {
    fn new(id: u64, epoch: u64) -> Self {
        Track {
            id,
            epoch,
            sent: 0,
            cleared: false,
            dirty: Vec::new(),
            marked: Vec::new(),
        }
    }

    #[inline]
    pub(super) fn touched(&mut self, i: usize) {
        if i >= self.sent {
            return;
        }
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if self.marked.len() <= w {
            self.marked.resize(w + 1, 0);
        }
        if self.marked[w] & b == 0 {
            self.marked[w] |= b;
            self.dirty.push(i);
        }
    }

    pub(super) fn restart(&mut self, cleared: bool) {
        self.sent = 0;
        self.dirty.clear();
        self.marked.clear();
        self.cleared |= cleared;
    }

    fn pop_dirty(&mut self) -> Option<usize> {
        let i = self.dirty.pop()?;
        self.marked[i / 64] &= !(1u64 << (i % 64));
        Some(i)
    }
}

/// How the hand-off's thread serializes maps now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// A batch while the process serves: up to the budget's slots, first the ones never sent.
    Batch,
    /// Inside the pause: every slot not sent or written since; a map not sent goes whole.
    Final,
    /// The hand-off is over without a commit: each map forgets what was sent.
    Forget,
}

/// What one serialization of a state in [`Mode::Batch`] sent.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Batch {
    /// Maps met.
    pub(crate) maps: usize,
    /// Slots written into the batch.
    pub(crate) sent: usize,
    /// Slots still to send (never sent, or written since).
    pub(crate) left: usize,
}

struct SendState {
    on: Option<(ThreadId, Mode)>,
    /// Set while a map writes its slots: a map inside them goes plain.
    nested: bool,
    epoch: u64,
    budget: usize,
    batch: Batch,
}

struct Sending {
    /// Maps alive in the process: a hand-off pre-copies only if there is one.
    live: AtomicUsize,
    /// Whether any thread is in a mode (the check every serialization of a map makes first).
    active: AtomicBool,
    next_id: AtomicU64,
    state: Mutex<SendState>,
}

/// Process-wide, and the host's also in a patch: the state being serialized may be a patch's
/// type, whose map code is the patch's copy of this crate.
static SENDING: Shared<Sending> = Shared::new("lazy-precopy-sending", || Sending {
    live: AtomicUsize::new(0),
    active: AtomicBool::new(false),
    next_id: AtomicU64::new(1),
    state: Mutex::new(SendState {
        on: None,
        nested: false,
        epoch: 0,
        budget: 0,
        batch: Batch::default(),
    }),
});

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` (which serializes states, with their components held) with this thread's maps in
/// `mode`, for the hand-off `epoch`; in [`Mode::Batch`], sending up to `budget` slots in all.
pub(crate) fn sending<R>(
    mode: Mode,
    epoch: u64,
    budget: usize,
    f: impl FnOnce() -> R,
) -> (R, Batch) {
    let s = SENDING.get();
    {
        let mut st = lock(&s.state);
        st.on = Some((thread::current().id(), mode));
        st.nested = false;
        st.epoch = epoch;
        st.budget = budget;
        st.batch = Batch::default();
    }
    s.active.store(true, Ordering::Relaxed);
    struct Off(&'static Sending);
    impl Drop for Off {
        fn drop(&mut self) {
            self.0.active.store(false, Ordering::Relaxed);
            lock(&self.0.state).on = None;
        }
    }
    let off = Off(s);
    let r = f();
    let batch = lock(&s.state).batch;
    drop(off);
    (r, batch)
}

pub(super) fn born() {
    SENDING.get().live.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn died() {
    SENDING.get().live.fetch_sub(1, Ordering::Relaxed);
}

/// Whether any map is alive in the process (one a state may hold).
pub(crate) fn any_alive() -> bool {
    SENDING.get().live.load(Ordering::Relaxed) > 0
}

/// A new hand-off's epoch.
pub(crate) fn new_epoch() -> u64 {
    SENDING.get().next_id.fetch_add(1, Ordering::Relaxed)
}

/// The mode this thread's maps serialize in, if any.
fn sending_mode() -> Option<Mode> {
    let s = SENDING.get();
    if !s.active.load(Ordering::Relaxed) {
        return None;
    }
    let st = lock(&s.state);
    match st.on {
        Some((t, m)) if !st.nested && t == thread::current().id() => Some(m),
        _ => None,
    }
}

/// Clears `nested` when dropped (also when a value's serialization fails or panics).
struct Nested<'a>(&'a Mutex<SendState>);
impl Drop for Nested<'_> {
    fn drop(&mut self) {
        lock(self.0).nested = false;
    }
}

/// `LazyMap::serialize`.
pub(super) fn serialize<K, V, S, Se>(map: &LazyMap<K, V, S>, s: Se) -> Result<Se::Ok, Se::Error>
where
    K: Serialize,
    V: Serialize,
    Se: Serializer,
{
    let Some(mode) = sending_mode() else {
        return s.collect_map(map.iter());
    };
    let ctx = SENDING.get();
    let t = map.track.load(Ordering::Relaxed);
    let epoch = lock(&ctx.state).epoch;
    // The track is the map's own box, and the hand-off holds the component (or every
    // component), so no call writes the map meanwhile; only this thread, in a mode, reads or
    // replaces the track.
    // SAFETY: as just said, `t` (when not null) is a live box nobody else touches now.
    let current = !t.is_null() && unsafe { (*t).epoch } == epoch;
    let t = match mode {
        Mode::Forget => {
            if !t.is_null() {
                map.track.store(ptr::null_mut(), Ordering::Relaxed);
                // SAFETY: the map's box, just taken out of it.
                drop(unsafe { Box::from_raw(t) });
            }
            return s.serialize_unit();
        }
        Mode::Final if !current => return s.collect_map(map.iter()),
        Mode::Final => t,
        Mode::Batch if current => t,
        Mode::Batch => {
            let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
            let fresh = Box::into_raw(Box::new(Track::new(id, epoch)));
            map.track.store(fresh, Ordering::Relaxed);
            if !t.is_null() {
                // SAFETY: the map's old box (of another hand-off), just replaced.
                drop(unsafe { Box::from_raw(t) });
            }
            fresh
        }
    };
    // SAFETY: the map's live box, touched by this thread alone now (see above).
    let track = unsafe { &mut *t };
    let mut st = lock(&ctx.state);
    let budget = if mode == Mode::Final {
        usize::MAX
    } else {
        st.budget
    };
    let len = map.slots.len();
    let sent = track.sent.min(len);
    let first = (len - sent).min(budget);
    let mut list: Vec<usize> = (sent..sent + first).collect();
    track.sent = sent + first;
    while list.len() < budget {
        match track.pop_dirty() {
            Some(i) => list.push(i),
            None => break,
        }
    }
    st.budget -= list.len().min(st.budget);
    st.batch.maps += 1;
    st.batch.sent += list.len();
    st.batch.left += (len - track.sent) + track.dirty.len();
    let cleared = std::mem::take(&mut track.cleared);
    let id = track.id;
    st.nested = true;
    drop(st);
    let _nested = Nested(&ctx.state);
    let mut tup = s.serialize_tuple(4)?;
    tup.serialize_element(&MAGIC)?;
    tup.serialize_element(&id)?;
    tup.serialize_element(&cleared)?;
    tup.serialize_element(&Ops { map, list })?;
    tup.end()
}

/// The slots of one delta, as `[slot, [key, value]]` or `[slot, nil]` for a free slot.
struct Ops<'a, K, V, S> {
    map: &'a LazyMap<K, V, S>,
    list: Vec<usize>,
}

impl<K: Serialize, V: Serialize, S> Serialize for Ops<'_, K, V, S> {
    fn serialize<Se: Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        let mut seq = s.serialize_seq(Some(self.list.len()))?;
        for &i in &self.list {
            let slot = &self.map.slots[i];
            if slot.ptr.load(Ordering::Relaxed).is_null() {
                seq.serialize_element(&(i as u64, None::<()>))?;
            } else {
                // SAFETY: the slot is occupied.
                let k = unsafe { slot.key() };
                seq.serialize_element(&(i as u64, Some((k, self.map.value(i)))))?;
            }
        }
        seq.end()
    }
}

// ---- The new process's side ----

struct RecvState {
    /// The thread reading a state now, and whether it is the pause's stream.
    on: Option<(ThreadId, bool)>,
    nested: bool,
    /// The mirrors, by the old process's map number.
    mirrors: Option<HashMap<u64, Box<dyn Any + Send>>>,
}

/// The new process's own: it reads states in its executable's code, never a patch's.
static RECEIVING: Mutex<RecvState> = Mutex::new(RecvState {
    on: None,
    nested: false,
    mirrors: None,
});

/// Runs `f` (which reads states) with this thread's maps reading delta forms into mirrors; in
/// the pause's stream (`last`), a delta's map is its mirror, taken out, and the new state's.
pub(crate) fn receiving<R>(last: bool, f: impl FnOnce() -> R) -> R {
    {
        let mut st = lock(&RECEIVING);
        st.on = Some((thread::current().id(), last));
        st.nested = false;
    }
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            lock(&RECEIVING).on = None;
        }
    }
    let _off = Off;
    f()
}

/// Drops the mirrors no state took (maps the old process dropped after sending them); returns
/// how many.
pub(crate) fn discard_mirrors() -> usize {
    let left = lock(&RECEIVING).mirrors.take();
    left.map_or(0, |m| m.len())
}

/// Whether this thread reads delta forms now, and if so whether in the pause's stream.
fn receiving_mode() -> Option<bool> {
    let st = lock(&RECEIVING);
    match st.on {
        Some((t, last)) if !st.nested && t == thread::current().id() => Some(last),
        _ => None,
    }
}

fn take_mirror<M: Any + Default>(id: u64) -> Result<M, String> {
    let found = lock(&RECEIVING)
        .mirrors
        .as_mut()
        .and_then(|m| m.remove(&id));
    match found {
        None => Ok(M::default()),
        Some(b) => b
            .downcast::<M>()
            .map(|b| *b)
            .map_err(|_| format!("the pre-copied map {id} was read as another type of map")),
    }
}

fn put_mirror<M: Any + Send>(id: u64, m: M) {
    lock(&RECEIVING)
        .mirrors
        .get_or_insert_with(HashMap::new)
        .insert(id, Box::new(m));
}

/// Clears `nested` when dropped.
struct RecvNested;
impl Drop for RecvNested {
    fn drop(&mut self) {
        lock(&RECEIVING).nested = false;
    }
}

/// `LazyMap::deserialize`.
pub(super) fn deserialize<'de, K, V, S, D>(d: D) -> Result<LazyMap<K, V, S>, D::Error>
where
    K: Deserialize<'de> + Eq + Hash + Send + 'static,
    V: Deserialize<'de> + Send + 'static,
    S: BuildHasher + Default + Send + 'static,
    D: Deserializer<'de>,
{
    match receiving_mode() {
        None => d.deserialize_map(Plain(PhantomData)),
        Some(last) => d.deserialize_any(Either {
            last,
            _m: PhantomData,
        }),
    }
}

/// The plain form: a map of keys to values.
struct Plain<K, V, S>(PhantomData<(K, V, S)>);

impl<'de, K, V, S> Visitor<'de> for Plain<K, V, S>
where
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
    S: BuildHasher + Default,
{
    type Value = LazyMap<K, V, S>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut m = LazyMap::with_capacity_and_hasher(
            a.size_hint().unwrap_or(0).min(1 << 16),
            S::default(),
        );
        while let Some((k, v)) = a.next_entry()? {
            m.insert(k, v);
        }
        Ok(m)
    }
}

/// The plain form or a delta.
struct Either<K, V, S> {
    last: bool,
    _m: PhantomData<(K, V, S)>,
}

impl<'de, K, V, S> Visitor<'de> for Either<K, V, S>
where
    K: Deserialize<'de> + Eq + Hash + Send + 'static,
    V: Deserialize<'de> + Send + 'static,
    S: BuildHasher + Default + Send + 'static,
{
    type Value = LazyMap<K, V, S>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map, or a pre-copied map's last slots")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        Plain(PhantomData).visit_map(a)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let missing =
            |what| de::Error::custom(format!("a pre-copied map's delta lacks its {what}"));
        let magic: u64 = a.next_element()?.ok_or_else(|| missing("mark"))?;
        if magic != MAGIC {
            return Err(de::Error::custom(
                "a sequence where a map (or a pre-copied map's delta) was expected",
            ));
        }
        let id: u64 = a.next_element()?.ok_or_else(|| missing("number"))?;
        let cleared: bool = a.next_element()?.ok_or_else(|| missing("cleared flag"))?;
        let mut mirror: LazyMap<K, V, S> = take_mirror(id).map_err(de::Error::custom)?;
        if cleared {
            mirror.clear();
        }
        lock(&RECEIVING).nested = true;
        let nested = RecvNested;
        let applied = a.next_element_seed(Apply(&mut mirror))?;
        drop(nested);
        if applied.is_none() {
            return Err(missing("slots"));
        }
        if self.last {
            mirror.rebuild_free();
            Ok(mirror)
        } else {
            put_mirror(id, mirror);
            Ok(LazyMap::default())
        }
    }
}

/// Applies a delta's slots to a mirror.
struct Apply<'a, K, V, S>(&'a mut LazyMap<K, V, S>);

impl<'de, K, V, S> DeserializeSeed<'de> for Apply<'_, K, V, S>
where
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
    S: BuildHasher,
{
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, K, V, S> Visitor<'de> for Apply<'_, K, V, S>
where
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
    S: BuildHasher,
{
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a pre-copied map's slots")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while let Some((i, entry)) = a.next_element::<(u64, Option<(K, V)>)>()? {
            let i = usize::try_from(i)
                .ok()
                .filter(|&i| i < isize::MAX as usize / std::mem::size_of::<Slot<K>>().max(1))
                .ok_or_else(|| de::Error::custom(format!("slot {i} is out of range")))?;
            match entry {
                Some((k, v)) => self.0.put_at(i, k, v),
                None => self.0.empty_at(i),
            }
        }
        Ok(())
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> LazyMap<K, V, S> {
    /// A mirror's slot `i` becomes `k`'s, with `v` (whatever it or `k` held before goes).
    fn put_at(&mut self, i: usize, k: K, v: V) {
        self.empty_at(i);
        if let (Some(pos), _) = self.find(&k) {
            let j = self.index.remove_at(pos);
            self.drop_slot(j);
        }
        while self.slots.len() <= i {
            self.slots.push(Slot {
                key: MaybeUninit::uninit(),
                ptr: AtomicPtr::new(ptr::null_mut()),
                ver: AtomicU32::new(self.ver),
            });
        }
        let hash = self.hasher.hash_one(&k);
        let s = &mut self.slots[i];
        s.key.write(k);
        *s.ptr.get_mut() = Box::into_raw(Box::new(v)) as *mut ();
        *s.ver.get_mut() = self.ver;
        self.index.insert(hash, i);
    }

    /// A mirror's slot `i` becomes free.
    fn empty_at(&mut self, i: usize) {
        if i >= self.slots.len() || self.slots[i].ptr.get_mut().is_null() {
            return;
        }
        // SAFETY: occupied (checked above).
        let hash = self.hasher.hash_one(unsafe { self.slots[i].key() });
        let pos = self
            .index
            .find(hash, |j| j == i)
            .expect("an occupied slot is indexed");
        self.index.remove_at(pos);
        self.drop_slot(i);
    }

    /// Drops the key and value of occupied slot `i`, which the index no longer names.
    fn drop_slot(&mut self, i: usize) {
        let s = &mut self.slots[i];
        let p = std::mem::replace(s.ptr.get_mut(), ptr::null_mut());
        // SAFETY: the slot was occupied (of this version: a mirror has one), and is free now.
        unsafe {
            s.key.assume_init_drop();
            drop(Box::from_raw(p as *mut V));
        }
    }

    /// A mirror is complete: its free slots become its free list.
    fn rebuild_free(&mut self) {
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].ptr.get_mut().is_null())
            .collect();
        *self.free = free;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{decode, encode};

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
}
