//! `#[dsu::global]`: statics owned by the runtime, so that a patch sees the host's instance.

use std::sync::atomic::{AtomicPtr, Ordering};

use std::collections::HashMap;
use std::sync::Mutex;

use super::incoming;
use super::thread::lock;
use crate::abi::desc::GlobalDesc;
use crate::abi::shared::Shared;

/// A runtime-owned global. `#[dsu::global] static X: T = init;` expands to a `Global<T>`,
/// which dereferences to the one instance of the process.
pub struct Global<T: Send + Sync + 'static> {
    cached: AtomicPtr<T>,
    desc: &'static GlobalDesc,
    init: fn() -> T,
}

/// A global's entry in the runtime: its fingerprint and the boxed value.
pub(crate) struct GlobalEntry {
    pub(crate) fingerprint: u64,
    pub(crate) ptr: *mut (),
    /// The descriptor of the version whose type the value has (its `save` serializes it).
    pub(crate) desc: &'static GlobalDesc,
}

// SAFETY: the pointee is a `T: Send + Sync` that lives for the rest of the process.
unsafe impl Send for GlobalEntry {}

/// Every global's value, by id (the host's, also in a patch).
static GLOBALS: Shared<Mutex<HashMap<String, GlobalEntry>>> =
    Shared::new("globals", || Mutex::new(HashMap::new()));

pub(crate) fn registry() -> &'static Mutex<HashMap<String, GlobalEntry>> {
    GLOBALS.get()
}

impl<T: Send + Sync + 'static> Global<T> {
    #[doc(hidden)]
    pub const fn new(desc: &'static GlobalDesc, init: fn() -> T) -> Self {
        Global {
            cached: AtomicPtr::new(std::ptr::null_mut()),
            desc,
            init,
        }
    }

    #[cold]
    fn resolve(&self) -> &T {
        let id = self.desc.id();
        let existing = lock(registry()).get(&id).map(|e| (e.fingerprint, e.ptr));
        let ptr = match existing {
            Some((fp, ptr)) => {
                assert_eq!(
                    fp, self.desc.fingerprint,
                    "dsu: global `{id}` has another type in this version than in the running \
                     process; a global that changes type needs a transfer"
                );
                ptr as *mut T
            }
            None => {
                // Initialise outside the lock: an initialiser may use other globals. A process
                // started by a hand-off takes the value its predecessor had.
                let fresh = match incoming::take_global(self.desc) {
                    Some(p) => p as *mut T,
                    None => Box::into_raw(Box::new((self.init)())),
                };
                let mut map = lock(registry());
                let entry = map.entry(id).or_insert(GlobalEntry {
                    fingerprint: self.desc.fingerprint,
                    ptr: fresh as *mut (),
                    desc: self.desc,
                });
                if entry.ptr != fresh as *mut () {
                    // Another thread won the race.
                    // SAFETY: `fresh` was never shared.
                    drop(unsafe { Box::from_raw(fresh) });
                }
                entry.ptr as *mut T
            }
        };
        // Release: pairs with the Acquire in `deref`.
        self.cached.store(ptr, Ordering::Release);
        // SAFETY: the runtime keeps the value alive for the rest of the process.
        unsafe { &*ptr }
    }
}

impl<T: Send + Sync + 'static> std::ops::Deref for Global<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // Acquire: the pointee was initialised before the pointer was published.
        let p = self.cached.load(Ordering::Acquire);
        if p.is_null() {
            self.resolve()
        } else {
            // SAFETY: as in `resolve`.
            unsafe { &*p }
        }
    }
}
