//! Process-wide singletons that a patch shares with the host.
//!
//! Every copy of this crate, the host's and each patch's, has statics of its own. A registry the
//! patch must see as the host's (the component types, the globals, the protocols, the thread
//! registry, the update manager) is a [`Shared`] static: on first use it resolves, by name,
//! through one table per process and caches the pointer. The host creates the table; a patch's
//! copy adopts the host's at load (`update/load.rs`, `adopt`), before any of its code runs, so
//! each of its `Shared` statics then resolves to the host's instance. A call through a resolved
//! `Shared` costs one `Acquire` load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// Name -> address of the leaked instance.
type Table = Mutex<HashMap<&'static str, usize>>;

static TABLE: AtomicPtr<Table> = AtomicPtr::new(std::ptr::null_mut());

fn table() -> &'static Table {
    // Acquire: pairs with the Release of the CAS below (or of the store in `adopt`), so the
    // table is initialised before it is used.
    let p = TABLE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: only ever set to a leaked table that lives for the rest of the process.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(Mutex::new(HashMap::new())));
    // AcqRel: publish ours (Release) or see the winner's (Acquire).
    match TABLE.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just leaked; lives for the rest of the process.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above.
            unsafe { &*winner }
        }
    }
}

/// This process's table, to be handed to a patch.
pub(crate) fn host_table() -> *const () {
    table() as *const Table as *const ()
}

/// Runs inside a patch (its copy of this crate): from now on, every `Shared` resolves to the
/// host's instance.
///
/// # Safety
/// `host` must come from [`host_table`] of a copy of this crate of the same version, built by
/// the same rustc for the same target, and no `Shared` of this copy may have been resolved yet.
pub(crate) unsafe fn adopt(host: *const ()) {
    TABLE.store(host as *mut Table, Ordering::Release);
}

/// See the module documentation.
pub(crate) struct Shared<T: 'static> {
    name: &'static str,
    /// Creates the instance; runs under the table's lock, so it must not use another `Shared`.
    make: fn() -> T,
    resolved: AtomicPtr<T>,
}

impl<T: Send + Sync + 'static> Shared<T> {
    pub(crate) const fn new(name: &'static str, make: fn() -> T) -> Self {
        Shared {
            name,
            make,
            resolved: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The process's instance (the host's, also when called from a patch).
    #[inline]
    pub(crate) fn get(&self) -> &'static T {
        // Acquire: pairs with the Release in `resolve`, so the pointee is initialised.
        let p = self.resolved.load(Ordering::Acquire);
        if p.is_null() {
            self.resolve()
        } else {
            // SAFETY: only ever set to a leaked instance that lives for the rest of the process.
            unsafe { &*p }
        }
    }

    #[cold]
    fn resolve(&self) -> &'static T {
        let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
        let addr = *table
            .entry(self.name)
            .or_insert_with(|| Box::into_raw(Box::new((self.make)())) as usize);
        drop(table);
        self.resolved.store(addr as *mut T, Ordering::Release);
        // SAFETY: the table's entries are leaked instances of the type their name stands for
        // (the same in every copy of this crate, checked by the loader), never freed.
        unsafe { &*(addr as *const T) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: Shared<Mutex<Vec<u32>>> = Shared::new("test-a", || Mutex::new(vec![1]));
    // A second static under the same name stands for another copy of the crate: it resolves to
    // the same instance.
    static A_IN_A_PATCH: Shared<Mutex<Vec<u32>>> = Shared::new("test-a", || Mutex::new(vec![]));

    #[test]
    fn a_name_resolves_to_one_instance() {
        A.get().lock().unwrap().push(2);
        assert!(std::ptr::eq(A.get(), A_IN_A_PATCH.get()));
        assert_eq!(*A_IN_A_PATCH.get().lock().unwrap(), vec![1, 2]);
    }
}
