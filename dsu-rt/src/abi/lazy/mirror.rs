//! A pre-copied [`LazyMap`] on the new process's side (`precopy.rs` is the old process's): a
//! *mirror* of each map, slot for slot, to which each batch is applied as it arrives; the
//! pause's stream names the mirror, which becomes the new state's map.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::precopy::MAGIC;
use super::{LazyMap, Slot};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
        None => d.deserialize_map(super::keyed::Plain(PhantomData)),
        Some(last) => d.deserialize_any(Either {
            last,
            _m: PhantomData,
        }),
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
        super::keyed::Plain(PhantomData).visit_map(a)
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
