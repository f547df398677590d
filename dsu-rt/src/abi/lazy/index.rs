//! The index of a [`LazyMap`](super::LazyMap): an open-addressing table of slot numbers with
//! their keys' hashes. The keys live in the slots, so the map can go through its entries in slot
//! order and name the key of any slot (a pre-copying hand-off streams slot ranges, then the
//! slots written since); a std `HashMap<K, usize>` holds the keys itself and can do neither.
//!
//! Linear probing; a removed bucket becomes a tombstone unless the next bucket is empty. The
//! table grows (or is rebuilt, when tombstones fill it) at 7/8 full, from the stored hashes
//! alone: the keys are never hashed again.

/// A bucket never used.
const EMPTY: usize = usize::MAX;
/// A bucket whose entry was removed; a probe goes on past it.
const TOMB: usize = usize::MAX - 1;

#[derive(Clone, Copy)]
struct Bucket {
    hash: u64,
    slot: usize,
}

pub(super) struct Index {
    buckets: Vec<Bucket>,
    /// Buckets holding an entry.
    len: usize,
    /// Buckets not empty (entries and tombstones).
    used: usize,
}

impl Index {
    pub(super) fn with_capacity(n: usize) -> Self {
        let mut i = Index {
            buckets: Vec::new(),
            len: 0,
            used: 0,
        };
        i.reserve(n);
        i
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The bucket of the entry with hash `hash` whose slot `eq` accepts.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut eq: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut pos = hash as usize & mask;
        loop {
            let b = self.buckets[pos];
            if b.slot == EMPTY {
                return None;
            }
            if b.slot != TOMB && b.hash == hash && eq(b.slot) {
                return Some(pos);
            }
            // Ends: at most 7/8 of the buckets are used, so an empty one comes.
            pos = (pos + 1) & mask;
        }
    }

    /// The slot of the entry in bucket `pos` (from [`find`](Self::find)).
    #[inline]
    pub(super) fn slot_at(&self, pos: usize) -> usize {
        self.buckets[pos].slot
    }

    /// Adds the entry of a key the table does not hold.
    pub(super) fn insert(&mut self, hash: u64, slot: usize) {
        debug_assert!(slot < TOMB);
        if (self.used + 1) * 8 > self.buckets.len() * 7 {
            self.rebuild(self.len + 1);
        }
        let mask = self.buckets.len() - 1;
        let mut pos = hash as usize & mask;
        loop {
            let b = &mut self.buckets[pos];
            if b.slot == EMPTY || b.slot == TOMB {
                if b.slot == EMPTY {
                    self.used += 1;
                }
                *b = Bucket { hash, slot };
                self.len += 1;
                return;
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Removes the entry in bucket `pos`; returns its slot.
    pub(super) fn remove_at(&mut self, pos: usize) -> usize {
        let mask = self.buckets.len() - 1;
        let slot = self.buckets[pos].slot;
        // No probe needs to pass a bucket followed by an empty one.
        if self.buckets[(pos + 1) & mask].slot == EMPTY {
            self.buckets[pos].slot = EMPTY;
            self.used -= 1;
        } else {
            self.buckets[pos].slot = TOMB;
        }
        self.len -= 1;
        slot
    }

    /// Keeps the entries whose slot `keep` accepts.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        for b in &mut self.buckets {
            if b.slot < TOMB && !keep(b.slot) {
                b.slot = TOMB;
                self.len -= 1;
            }
        }
    }

    pub(super) fn clear(&mut self) {
        for b in &mut self.buckets {
            b.slot = EMPTY;
        }
        self.len = 0;
        self.used = 0;
    }

    /// Makes room for `n` more entries.
    pub(super) fn reserve(&mut self, n: usize) {
        let want = self.len.saturating_add(n);
        if want.saturating_mul(8) > self.buckets.len().saturating_mul(7) {
            self.rebuild(want);
        }
    }

    /// Rehashes into a table for at least `n` entries (twice that, so that a table full of
    /// tombstones is not rebuilt again at once), without tombstones.
    #[cold]
    fn rebuild(&mut self, n: usize) {
        let mut cap = 8usize;
        while cap * 7 < n.max(self.len).saturating_mul(2) * 8 {
            cap *= 2;
        }
        let old = std::mem::replace(
            &mut self.buckets,
            vec![
                Bucket {
                    hash: 0,
                    slot: EMPTY
                };
                cap
            ],
        );
        let mask = cap - 1;
        for b in old.into_iter().filter(|b| b.slot < TOMB) {
            let mut pos = b.hash as usize & mask;
            while self.buckets[pos].slot != EMPTY {
                pos = (pos + 1) & mask;
            }
            self.buckets[pos] = b;
        }
        self.used = self.len;
    }
}

#[cfg(test)]
mod tests {
    use super::Index;
    use std::collections::HashMap;

    /// Against a `HashMap` of hash -> slot, with hashes that collide on purpose (few distinct
    /// low bits), through inserts, removes, retains and rebuilds.
    #[test]
    fn the_index_finds_what_a_hash_map_finds_through_collisions_and_tombstones() {
        let mut idx = Index::with_capacity(0);
        let mut model: HashMap<u64, usize> = HashMap::new();
        let mut x = 12345u64;
        for step in 0..200_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 4096 keys, whose hashes share their low bits in groups of 64.
            let key = (x % 4096) << 6;
            let pos = idx.find(key, |_| true);
            assert_eq!(
                pos.map(|p| idx.slot_at(p)),
                model.get(&key).copied(),
                "step {step}"
            );
            match (pos, x % 3) {
                (None, _) => {
                    idx.insert(key, step);
                    model.insert(key, step);
                }
                (Some(p), 0) => {
                    assert_eq!(idx.remove_at(p), model.remove(&key).unwrap());
                }
                _ => {}
            }
            if step % 50_000 == 0 {
                idx.retain(|s| s % 2 == 0);
                model.retain(|_, s| *s % 2 == 0);
            }
            assert_eq!(idx.len(), model.len());
        }
        for (&k, &s) in &model {
            assert_eq!(idx.find(k, |_| true).map(|p| idx.slot_at(p)), Some(s));
        }
        idx.clear();
        assert_eq!(idx.len(), 0);
        assert!(idx.find(64, |_| true).is_none());
    }
}
