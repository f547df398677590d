//! How a type change takes a [`LazyMap`] over: the generated transfer adopts the old map's table,
//! the commit settles it, and the old map is forgotten.

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize};
use std::sync::{Mutex, PoisonError};

use super::{LazyMap, LazyStep};

impl<K, V, S> LazyMap<K, V, S> {
    /// The update that converts the map committed: the entries converted while it was checked
    /// become the map's, the old map's boxes they came from are released, and the map owns the
    /// table from now on.
    pub fn settle(&mut self) {
        let Some(p) = self.probation.take() else {
            return;
        };
        let made = p.made.into_inner().unwrap_or_else(PoisonError::into_inner);
        let step = self.step.expect("a map in probation has a step");
        for (i, new) in made {
            let s = &mut self.slots[i];
            let old = std::mem::replace(s.ptr.get_mut(), new as *mut ());
            *s.ver.get_mut() = self.ver;
            // SAFETY: `new` took the old box's fields over (`peek`).
            unsafe { (step.release_old)(old) };
            *self.pending.get_mut() -= 1;
        }
    }

    /// Takes an old map over for the new version of its value type (a generated transfer). The
    /// old map's own unconverted entries (from an earlier update) are converted first. The new
    /// map shares the table with the old one until [`settle`](Self::settle); dropped before
    /// that (the update failed), it frees only what it made.
    ///
    /// # Safety
    /// `V0` must be the previous version of `V`, and `step` convert it to `V`; `old` must be
    /// released with [`LazyMap::forget`] if the new map settles, and left as it is otherwise.
    #[doc(hidden)]
    pub unsafe fn adopt<V0>(old: &LazyMap<K, V0, S>, step: &'static LazyStep) -> Self {
        old.convert_all_shared();
        super::track::born();
        LazyMap {
            // SAFETY: a bitwise copy, owned by the old map until the new one settles.
            index: unsafe { ptr::read(&old.index) },
            // SAFETY: as above.
            hasher: unsafe { ptr::read(&old.hasher) },
            // SAFETY: as above.
            slots: unsafe { ptr::read(&old.slots) },
            // SAFETY: as above.
            free: unsafe { ptr::read(&old.free) },
            ver: old.ver.wrapping_add(1),
            step: Some(step),
            pending: AtomicUsize::new(old.len()),
            cursor: 0,
            converting: Mutex::new(()),
            probation: Some(Box::default()),
            track: AtomicPtr::new(ptr::null_mut()),
            _v: PhantomData,
        }
    }

    /// Frees a map whose table a new map took over ([`adopt`](Self::adopt)) and settled.
    ///
    /// # Safety
    /// The table must be owned by the settled new map.
    #[doc(hidden)]
    pub unsafe fn forget(self) {
        let mut this = ManuallyDrop::new(self);
        // The table is the new map's; the rest needs no drop.
        drop(this.probation.take());
        this.drop_track();
        super::track::died();
    }
}
