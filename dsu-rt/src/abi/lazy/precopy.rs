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

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Serialize, Serializer};

use super::track::Track;
use super::LazyMap;
use crate::abi::shared::Shared;

/// The first element of a delta form, apart from any key a plain map could start with (a map is
/// written as a map, a delta as a sequence; this checks a sequence is ours).
pub(super) const MAGIC: u64 = 0x6473_752d_7072_6563;

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
    /// Whether any thread is in a mode (the check every serialization of a map makes first).
    active: AtomicBool,
    next_id: AtomicU64,
    state: Mutex<SendState>,
}

/// Process-wide, and the host's also in a patch: the state being serialized may be a patch's
/// type, whose map code is the patch's copy of this crate.
static SENDING: Shared<Sending> = Shared::new("lazy-precopy-sending", || Sending {
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

#[cfg(test)]
mod tests;
