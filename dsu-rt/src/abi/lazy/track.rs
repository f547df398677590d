//! What every [`LazyMap`](super::LazyMap) keeps for a pre-copying hand-off (`precopy.rs`): the
//! record of the slots sent and written since, and the count of maps alive (a hand-off
//! pre-copies only if there is one).

#[cfg(not(dsu_off))]
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(not(dsu_off))]
use crate::abi::shared::Shared;

/// What a hand-off has sent of one map.
pub(crate) struct Track {
    /// The map's number, unique in the process.
    pub(super) id: u64,
    /// The hand-off that sent it (a failed one leaves nothing the next may trust).
    pub(super) epoch: u64,
    /// Slots below this were sent once (the first pass's progress).
    pub(super) sent: usize,
    /// The map was cleared since the last batch: the mirror must be too.
    pub(super) cleared: bool,
    /// Slots below `sent` written since they were sent, each once (`marked`).
    pub(super) dirty: Vec<usize>,
    marked: Vec<u64>,
}

impl Track {
    pub(super) fn new(id: u64, epoch: u64) -> Self {
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

    pub(super) fn pop_dirty(&mut self) -> Option<usize> {
        let i = self.dirty.pop()?;
        self.marked[i / 64] &= !(1u64 << (i % 64));
        Some(i)
    }
}

/// Maps alive in the process. Process-wide, and the host's also in a patch (whose maps count
/// too).
#[cfg(not(dsu_off))]
static LIVE: Shared<AtomicUsize> = Shared::new("lazy-live", || AtomicUsize::new(0));

#[inline]
pub(super) fn born() {
    #[cfg(not(dsu_off))]
    LIVE.get().fetch_add(1, Ordering::Relaxed);
}

#[inline]
pub(super) fn died() {
    #[cfg(not(dsu_off))]
    LIVE.get().fetch_sub(1, Ordering::Relaxed);
}

/// Whether any map is alive in the process (one a state may hold).
#[cfg(not(dsu_off))]
pub(crate) fn any_alive() -> bool {
    LIVE.get().load(Ordering::Relaxed) > 0
}
