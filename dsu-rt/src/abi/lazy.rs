//! [`LazyMap`]: a hash map whose entries a type change converts on first access and by a
//! background pass, so that the update's pause does not grow with the map (DESIGN.md §7,
//! "Incremental conversion").

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use index::Index;
use track::Track;

// The std and serde traits.
mod impls;
mod index;
mod keyed;
#[cfg(not(dsu_off))]
pub(crate) mod mirror;
#[cfg(not(dsu_off))]
pub(crate) mod precopy;
mod takeover;
pub(crate) mod track;

/// How one entry goes from the previous version of a map's value type to the next. cargo-dsu
/// generates one in the patch that changes the type; the map holds it until every entry is
/// converted.
pub struct LazyStep {
    /// Makes a box of the new value that takes the old value's unchanged fields over (bitwise),
    /// leaving the old box as it is. It may panic (a conversion of the value's own code); the
    /// old box is then intact.
    pub peek: unsafe fn(*const ()) -> *mut (),
    /// Frees an old box whose fields `peek` took over, without them (after the commit).
    pub release_old: unsafe fn(*mut ()),
    /// Frees a new box made by `peek`, without the fields it took over (the update rolled back).
    pub discard_new: unsafe fn(*mut ()),
    /// Drops a whole box of the old value (an entry removed, or the map dropped, before the
    /// entry was converted).
    pub drop_old: unsafe fn(*mut ()),
}

impl LazyStep {
    /// Converts a box of the old value into one of the new, releasing the old box (after the
    /// commit, when nothing else reads it).
    ///
    /// # Safety
    /// `old` is a box of the old value that nobody else owns or reads.
    unsafe fn convert(&self, old: *mut ()) -> *mut () {
        // SAFETY: caller's contract; if `peek` panics, the old box is intact.
        let new = unsafe { (self.peek)(old) };
        // SAFETY: `peek` took the old value's kept fields over.
        unsafe { (self.release_old)(old) };
        new
    }
}

/// One entry: its key and a box of its value, of the map's value type (`ver` is the map's) or,
/// while a type change is being converted, of the previous version. A free slot's `ptr` is null
/// and its key uninitialised.
struct Slot<K> {
    key: MaybeUninit<K>,
    ptr: AtomicPtr<()>,
    ver: AtomicU32,
}

impl<K> Slot<K> {
    /// # Safety
    /// The slot is occupied (`ptr` not null).
    #[inline]
    unsafe fn key(&self) -> &K {
        // SAFETY: an occupied slot's key is initialised.
        unsafe { self.key.assume_init_ref() }
    }
}

/// The entries converted through `&self` while the update that converts the map is not yet
/// committed (by its `health_check`): the old map shares the table and must find it as it was if
/// the update rolls back, so the new boxes are kept aside, by slot.
#[derive(Default)]
struct Probation {
    made: Mutex<HashMap<usize, usize>>,
}

/// A hash map for the state of a component whose value type may change in a live update
/// without a pause that grows with the map.
///
/// With a `HashMap<K, V>`, an update that changes `V` converts every entry while the component
/// is held: at a million entries, a pause of hundreds of milliseconds. With a `LazyMap<K, V>`,
/// the update takes the map over as it is (a constant-time move) and each entry is converted
/// when it is first touched, or by a background pass that converts a bounded batch at a time
/// between calls (like Redis's incremental rehash). Every entry is converted by the same
/// generated code as an eager transfer would run.
///
/// The price: each value is boxed (one allocation per entry, one indirection per access), and
/// a read of an entry not yet converted converts it under a lock. Reads and writes are
/// otherwise those of the `HashMap` that indexes the entries.
///
/// Until the update commits, the map is only read (by the new version's `health_check`); a
/// write in that window (a `migrate` hook) panics, which fails the update and rolls it back.
pub struct LazyMap<K, V, S = RandomState> {
    // The table: dropped by hand, since a map in probation does not own it. The index holds slot
    // numbers by their keys' hashes; the keys are in the slots.
    index: ManuallyDrop<Index>,
    hasher: ManuallyDrop<S>,
    slots: ManuallyDrop<Vec<Slot<K>>>,
    free: ManuallyDrop<Vec<usize>>,
    /// The version of the values of type `V`: slots of `ver - 1` are still of the previous type.
    ver: u32,
    /// How slots of the previous version are converted, while any is left.
    step: Option<&'static LazyStep>,
    /// Entries of the previous version left.
    pending: AtomicUsize,
    /// Where the background pass goes on.
    cursor: usize,
    /// Serialises the conversions made through `&self`.
    converting: Mutex<()>,
    /// Set from the transfer that took the map over until the update commits: the table is then
    /// the old map's as well, and this map does not own it.
    probation: Option<Box<Probation>>,
    /// What a pre-copying hand-off has sent of the map (`track.rs`, `precopy.rs`): set by the hand-off's
    /// first batch, with the component held; null otherwise.
    track: AtomicPtr<Track>,
    _v: PhantomData<V>,
}

// SAFETY: the map owns its values (boxed `V`s, or values of the previous version of the same
// type) like a `HashMap<K, V, S>` does.
unsafe impl<K: Send, V: Send, S: Send> Send for LazyMap<K, V, S> {}
// SAFETY: `&self` methods may convert a value on any thread (hence `V: Send`) under the
// `converting` lock, and hand out `&V` like a `HashMap` does.
unsafe impl<K: Sync, V: Send + Sync, S: Sync> Sync for LazyMap<K, V, S> {}

impl<K, V> LazyMap<K, V, RandomState> {
    pub fn new() -> Self {
        Self::with_hasher(RandomState::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Self::with_capacity_and_hasher(n, RandomState::new())
    }
}

impl<K, V, S: Default> Default for LazyMap<K, V, S> {
    fn default() -> Self {
        Self::with_hasher(S::default())
    }
}

impl<K, V, S> LazyMap<K, V, S> {
    pub fn with_hasher(hasher: S) -> Self {
        Self::with_capacity_and_hasher(0, hasher)
    }

    pub fn with_capacity_and_hasher(n: usize, hasher: S) -> Self {
        track::born();
        LazyMap {
            index: ManuallyDrop::new(Index::with_capacity(n)),
            hasher: ManuallyDrop::new(hasher),
            slots: ManuallyDrop::new(Vec::with_capacity(n)),
            free: ManuallyDrop::new(Vec::new()),
            ver: 0,
            step: None,
            pending: AtomicUsize::new(0),
            cursor: 0,
            converting: Mutex::new(()),
            probation: None,
            track: AtomicPtr::new(ptr::null_mut()),
            _v: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    pub fn hasher(&self) -> &S {
        &self.hasher
    }

    /// Slot `i` was written (a value changed, an entry added or removed): a pre-copying hand-off
    /// that sent it sends it again.
    #[inline]
    fn touched(&mut self, i: usize) {
        let t = *self.track.get_mut();
        if !t.is_null() {
            // SAFETY: the track is the map's own box; `&mut self` makes the access unique.
            unsafe { (*t).touched(i) };
        }
    }

    /// Many slots were written (`iter_mut`, `retain`) or all removed (`clear`): a pre-copying
    /// hand-off sends the map again from the start.
    fn touched_all(&mut self, cleared: bool) {
        let t = *self.track.get_mut();
        if !t.is_null() {
            // SAFETY: as in `touched`.
            unsafe { (*t).restart(cleared) };
        }
    }

    /// Entries not yet converted to the map's value type by the last update that changed it.
    pub fn unconverted(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The value in slot `i`, converted first if it is of the previous version.
    #[inline]
    fn value(&self, i: usize) -> &V {
        let slot = &self.slots[i];
        // Acquire: pairs with the Release store of a conversion, so `ptr` is the new box.
        if slot.ver.load(Ordering::Acquire) == self.ver {
            // SAFETY: a slot of the map's version holds a box of `V`.
            unsafe { &*(slot.ptr.load(Ordering::Relaxed) as *const V) }
        } else {
            self.convert_shared(i)
        }
    }

    #[cold]
    #[inline(never)]
    fn convert_shared(&self, i: usize) -> &V {
        let step = self.step.expect("a slot of another version has a step");
        let slot = &self.slots[i];
        if let Some(p) = &self.probation {
            let mut made = p.made.lock().unwrap_or_else(PoisonError::into_inner);
            let new = match made.get(&i) {
                Some(&new) => new as *mut (),
                None => {
                    // SAFETY: the slot holds a box of the previous version, which `step`
                    // converts; the old box stays as it is (the old map's, until the commit).
                    let new = unsafe { (step.peek)(slot.ptr.load(Ordering::Relaxed)) };
                    made.insert(i, new as usize);
                    new
                }
            };
            // SAFETY: kept in `made` until the map settles, which takes `&mut self`.
            return unsafe { &*(new as *const V) };
        }
        let _g = self
            .converting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.ver.load(Ordering::Acquire) != self.ver {
            // SAFETY: the slot holds a box of the previous version; nobody else reads it (readers
            // of this version only read slots of this version), so it is released at once.
            let new = unsafe { step.convert(slot.ptr.load(Ordering::Relaxed)) };
            slot.ptr.store(new, Ordering::Relaxed);
            slot.ver.store(self.ver, Ordering::Release);
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        // SAFETY: the slot is of this version now.
        unsafe { &*(slot.ptr.load(Ordering::Relaxed) as *const V) }
    }

    /// Converts slot `i` if it is of the previous version.
    #[inline]
    fn convert_exclusive(&mut self, i: usize) {
        let ver = self.ver;
        let slot = &mut self.slots[i];
        if *slot.ver.get_mut() == ver {
            return;
        }
        let step = self.step.expect("a slot of another version has a step");
        // SAFETY: as in `convert_shared`.
        let new = unsafe { step.convert(*slot.ptr.get_mut()) };
        *slot.ptr.get_mut() = new;
        *slot.ver.get_mut() = ver;
        *self.pending.get_mut() -= 1;
    }

    #[inline]
    fn value_mut(&mut self, i: usize) -> &mut V {
        self.convert_exclusive(i);
        self.touched(i);
        // SAFETY: the slot is of this version now, and `&mut self` makes the access unique.
        unsafe { &mut *(*self.slots[i].ptr.get_mut() as *mut V) }
    }

    /// A write while the update that converts the map is not committed: refused (see the type's
    /// documentation).
    #[inline]
    fn writable(&self, what: &str) {
        if self.probation.is_some() {
            refuse_write(what);
        }
    }

    /// Converts up to `budget` entries (the background pass); returns how many are left.
    pub fn convert_some(&mut self, budget: usize) -> usize {
        if self.probation.is_some() {
            return *self.pending.get_mut();
        }
        let mut seen = 0;
        while seen < budget && *self.pending.get_mut() > 0 {
            if self.cursor >= self.slots.len() {
                // Every slot from the start of the pass on was seen, but entries were converted
                // out of order: start again (their count says some are left).
                self.cursor = 0;
            }
            let i = self.cursor;
            self.cursor += 1;
            seen += 1;
            if !self.slots[i].ptr.get_mut().is_null() {
                self.convert_exclusive(i);
            }
        }
        let left = *self.pending.get_mut();
        if left == 0 {
            self.step = None;
            self.cursor = 0;
        }
        left
    }

    /// Converts every entry still of the previous version, through `&self`.
    fn convert_all_shared(&self) {
        if self.pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        for i in 0..self.slots.len() {
            if !self.slots[i].ptr.load(Ordering::Relaxed).is_null() {
                self.value(i);
            }
        }
    }

    fn convert_all(&mut self) {
        while self.convert_some(usize::MAX) > 0 {}
    }

    /// Empties slot `i` (converting it first, dropping its key) and returns the box it held.
    fn free_slot(&mut self, i: usize) -> *mut V {
        self.convert_exclusive(i);
        self.touched(i);
        let s = &mut self.slots[i];
        let p = std::mem::replace(s.ptr.get_mut(), ptr::null_mut());
        // SAFETY: the slot was occupied; its key is dropped once, and the slot is free now.
        unsafe { s.key.assume_init_drop() };
        self.free.push(i);
        p as *mut V
    }

    fn new_slot(&mut self, k: K, v: V) -> usize {
        let p = Box::into_raw(Box::new(v)) as *mut ();
        let i = match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i];
                s.key.write(k);
                *s.ptr.get_mut() = p;
                *s.ver.get_mut() = self.ver;
                i
            }
            None => {
                self.slots.push(Slot {
                    key: MaybeUninit::new(k),
                    ptr: AtomicPtr::new(p),
                    ver: AtomicU32::new(self.ver),
                });
                self.slots.len() - 1
            }
        };
        self.touched(i);
        i
    }

    /// The occupied slots, in slot order.
    fn occupied(&self) -> impl Iterator<Item = (usize, &Slot<K>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.ptr.load(Ordering::Relaxed).is_null())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        // SAFETY: `occupied` yields occupied slots.
        self.occupied()
            .map(|(i, s)| (unsafe { s.key() }, self.value(i)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        // SAFETY: as above.
        self.occupied().map(|(_, s)| unsafe { s.key() })
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.occupied().map(|(i, _)| self.value(i))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> + '_ {
        self.writable("iter_mut");
        self.convert_all();
        self.touched_all(false);
        self.slots.iter_mut().filter_map(|s| {
            let s: &Slot<K> = s;
            let p = s.ptr.load(Ordering::Relaxed) as *mut V;
            // SAFETY: every occupied slot is of this version and holds its own box, and
            // `&mut self` is held for as long as the iterator lives.
            (!p.is_null()).then(|| (unsafe { s.key() }, unsafe { &mut *p }))
        })
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.iter_mut().map(|(_, v)| v)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.writable("clear");
        self.touched_all(true);
        self.drop_entries();
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.cursor = 0;
    }

    /// Keeps the entries for which `f` is true.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        self.writable("retain");
        self.convert_all();
        self.touched_all(false);
        let (index, slots, free) = (&mut self.index, &mut self.slots, &mut self.free);
        index.retain(|i| {
            let s = &mut slots[i];
            let p = *s.ptr.get_mut() as *mut V;
            // SAFETY: every indexed slot is occupied, of this version (converted above), and
            // owned by the map.
            if f(unsafe { s.key() }, unsafe { &mut *p }) {
                return true;
            }
            *s.ptr.get_mut() = ptr::null_mut();
            // SAFETY: the slot was occupied and is free now: its key is dropped once.
            unsafe { s.key.assume_init_drop() };
            free.push(i);
            // SAFETY: the slot no longer holds the box.
            drop(unsafe { Box::from_raw(p) });
            false
        });
    }

    /// Drops every key and value.
    fn drop_entries(&mut self) {
        let ver = self.ver;
        for s in self.slots.iter_mut() {
            let p = std::mem::replace(s.ptr.get_mut(), ptr::null_mut());
            if p.is_null() {
                continue;
            }
            // SAFETY: the slot was occupied; it is free now.
            unsafe { s.key.assume_init_drop() };
            if *s.ver.get_mut() == ver {
                // SAFETY: a slot of this version holds a box of `V`.
                drop(unsafe { Box::from_raw(p as *mut V) });
            } else if let Some(step) = self.step {
                // SAFETY: a slot of the previous version holds a box `step` can drop.
                unsafe { (step.drop_old)(p) };
            }
        }
        *self.pending.get_mut() = 0;
        self.step = None;
    }

    pub(super) fn drop_track(&mut self) {
        let t = std::mem::replace(self.track.get_mut(), ptr::null_mut());
        if !t.is_null() {
            // SAFETY: the map's own box, taken out of it.
            drop(unsafe { Box::from_raw(t) });
        }
    }
}

#[cold]
#[inline(never)]
fn refuse_write(what: &str) -> ! {
    panic!(
        "dsu: `LazyMap::{what}` while the update that converts the map is being checked: until it \
         commits, the map is shared with the old version and can only be read (write in a \
         method called after the update, not in `migrate`)"
    )
}

impl<K, V, S> Drop for LazyMap<K, V, S> {
    fn drop(&mut self) {
        track::died();
        if let Some(p) = self.probation.take() {
            // Taken over from an old map by an update that did not commit: the table is the
            // old map's; only the values converted meanwhile are this map's.
            let made = p.made.into_inner().unwrap_or_else(PoisonError::into_inner);
            if let Some(step) = self.step {
                for (_, new) in made {
                    // SAFETY: made by `peek`, whose fields are the old map's.
                    unsafe { (step.discard_new)(new as *mut ()) };
                }
            }
            // The index, hasher, slots and free list are bitwise copies of the old map's: not
            // dropped.
            return;
        }
        self.drop_track();
        self.drop_entries();
        // SAFETY: owned (not in probation), and never used again.
        unsafe {
            ManuallyDrop::drop(&mut self.index);
            ManuallyDrop::drop(&mut self.hasher);
            ManuallyDrop::drop(&mut self.slots);
            ManuallyDrop::drop(&mut self.free);
        }
    }
}

/// A [`LazyStep::peek`] made of a generated moving conversion.
///
/// # Safety
/// `old` is a box of `O`; the conversion's contract is [`LazyStep::peek`]'s.
pub unsafe fn lazy_peek<O, N>(old: *const (), f: unsafe fn(&O) -> N) -> *mut () {
    // SAFETY: caller's contract.
    let new = unsafe { f(&*(old as *const O)) };
    Box::into_raw(Box::new(new)) as *mut ()
}

/// A [`LazyStep::release_old`] or [`LazyStep::discard_new`]: frees a box of `T` with `free`,
/// which drops in place only what the value owns alone, then the box.
///
/// # Safety
/// `p` is a box of `T`, and `free` matches how it was made or taken from.
pub unsafe fn lazy_free<T>(p: *mut (), free: unsafe fn(*mut T)) {
    let p = p as *mut T;
    // SAFETY: caller's contract.
    unsafe { free(p) };
    if std::mem::size_of::<T>() != 0 {
        // SAFETY: allocated as a `Box<T>`, whose contents were just dropped (or are another's).
        unsafe { std::alloc::dealloc(p as *mut u8, std::alloc::Layout::new::<T>()) };
    }
}

/// A [`LazyStep::drop_old`]: drops a whole box of `T`.
///
/// # Safety
/// `p` is a box of `T` nobody else owns.
pub unsafe fn lazy_drop<T>(p: *mut ()) {
    // SAFETY: caller's contract.
    drop(unsafe { Box::from_raw(p as *mut T) });
}

#[cfg(test)]
mod tests;
