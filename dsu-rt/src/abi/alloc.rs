//! The patch's global allocator: forwards to the host's.
//!
//! A patch is a cdylib with its own copy of std and, left alone, its own allocator. Memory
//! crosses the boundary all the time (a `String` argument allocated by the host and dropped by
//! patched code, a state transferred by the patch and later freed by the host), so both sides
//! must use one allocator: the host's, whatever `#[global_allocator]` it set. The patch's root
//! (see `patch_root!`) declares [`ForwardAlloc`] as its global allocator; adoption hands it the
//! host's `std::alloc` functions.
//!
//! Before adoption (the loader's very first steps inside the library), allocations come from a
//! small static arena; freeing arena memory is a no-op, so a block never reaches an allocator
//! that did not hand it out.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The host's allocation functions.
#[repr(C)]
pub struct HostAlloc {
    pub alloc: unsafe fn(Layout) -> *mut u8,
    pub dealloc: unsafe fn(*mut u8, Layout),
    pub realloc: unsafe fn(*mut u8, Layout, usize) -> *mut u8,
    pub alloc_zeroed: unsafe fn(Layout) -> *mut u8,
}

/// The host's functions, to be handed to a patch: they call the host's global allocator.
pub(crate) static HOST_ALLOC: HostAlloc = HostAlloc {
    alloc: host_alloc,
    dealloc: host_dealloc,
    realloc: host_realloc,
    alloc_zeroed: host_alloc_zeroed,
};

/// # Safety
/// The `GlobalAlloc::alloc` contract.
unsafe fn host_alloc(l: Layout) -> *mut u8 {
    // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, forwarded unchanged.
    unsafe { std::alloc::alloc(l) }
}

/// # Safety
/// The `GlobalAlloc::dealloc` contract.
unsafe fn host_dealloc(p: *mut u8, l: Layout) {
    // SAFETY: as above, for `dealloc`.
    unsafe { std::alloc::dealloc(p, l) }
}

/// # Safety
/// The `GlobalAlloc::realloc` contract.
unsafe fn host_realloc(p: *mut u8, l: Layout, n: usize) -> *mut u8 {
    // SAFETY: as above, for `realloc`.
    unsafe { std::alloc::realloc(p, l, n) }
}

/// # Safety
/// The `GlobalAlloc::alloc_zeroed` contract.
unsafe fn host_alloc_zeroed(l: Layout) -> *mut u8 {
    // SAFETY: as above, for `alloc_zeroed`.
    unsafe { std::alloc::alloc_zeroed(l) }
}

const ARENA_SIZE: usize = 256 * 1024;

#[repr(C, align(64))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: disjoint ranges of the arena are handed out by an atomic bump pointer.
unsafe impl Sync for Arena {}

/// Forwards to the host's allocator once adopted (see the module documentation).
pub struct ForwardAlloc {
    host: AtomicPtr<HostAlloc>,
    arena: Arena,
    used: AtomicUsize,
}

impl ForwardAlloc {
    #[allow(clippy::new_without_default)] // a `static` initialiser
    pub const fn new() -> Self {
        ForwardAlloc {
            host: AtomicPtr::new(std::ptr::null_mut()),
            arena: Arena(UnsafeCell::new([0; ARENA_SIZE])),
            used: AtomicUsize::new(0),
        }
    }

    /// Routes every later allocation to `host`.
    pub fn adopt(&self, host: &'static HostAlloc) {
        // Release: pairs with the Acquire in `host`, publishing the table's contents.
        self.host.store(
            host as *const HostAlloc as *mut HostAlloc,
            Ordering::Release,
        );
    }

    fn host(&self) -> Option<&'static HostAlloc> {
        // Acquire: see `adopt`.
        let p = self.host.load(Ordering::Acquire);
        // SAFETY: only ever set to a `&'static HostAlloc`.
        unsafe { p.as_ref() }
    }

    fn in_arena(&self, p: *mut u8) -> bool {
        let start = self.arena.0.get() as usize;
        (start..start + ARENA_SIZE).contains(&(p as usize))
    }

    fn arena_alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.0.get() as usize;
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = (base + used).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > ARENA_SIZE {
                return std::ptr::null_mut();
            }
            // Relaxed: the counter only partitions the arena; no data is published through it.
            match self
                .used
                .compare_exchange(used, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(u) => used = u,
            }
        }
    }
}

// SAFETY: every request is either served by the host's allocator (which upholds GlobalAlloc)
// or by disjoint, suitably aligned ranges of the static arena, which are never handed to the
// host's `dealloc`/`realloc`.
unsafe impl GlobalAlloc for ForwardAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.host() {
            // SAFETY: forwarding the caller's contract.
            Some(h) => unsafe { (h.alloc)(layout) },
            None => self.arena_alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.host() {
            // SAFETY: forwarding the caller's contract.
            Some(h) => unsafe { (h.alloc_zeroed)(layout) },
            // The arena starts zeroed and is never reused.
            None => self.arena_alloc(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.in_arena(ptr) {
            return;
        }
        if let Some(h) = self.host() {
            // SAFETY: not an arena block, so the host's allocator handed it out.
            unsafe { (h.dealloc)(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.in_arena(ptr) {
            // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            // SAFETY: forwarding to our own `alloc`.
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both blocks are valid for the smaller of the two sizes, and disjoint.
                unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            }
            return new;
        }
        match self.host() {
            // SAFETY: not an arena block, so the host's allocator handed it out.
            Some(h) => unsafe { (h.realloc)(ptr, layout, new_size) },
            None => std::ptr::null_mut(),
        }
    }
}
