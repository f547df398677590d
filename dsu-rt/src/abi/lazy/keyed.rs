//! The operations of a [`LazyMap`] that find an entry by its key.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use std::marker::PhantomData;

use super::LazyMap;

impl<K: Eq + Hash, V, S: BuildHasher> LazyMap<K, V, S> {
    /// The bucket of `k` in the index, and `k`'s hash.
    #[inline]
    pub(super) fn find<Q>(&self, k: &Q) -> (Option<usize>, u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(k);
        let slots = &self.slots;
        // SAFETY: the index names occupied slots only.
        let pos = self
            .index
            .find(hash, |i| unsafe { slots[i].key() }.borrow() == k);
        (pos, hash)
    }

    /// The slot of `k`.
    #[inline]
    fn slot_of<Q>(&self, k: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(k).0.map(|pos| self.index.slot_at(pos))
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.slot_of(k)?;
        Some(self.value(i))
    }

    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.writable("get_mut");
        let i = self.slot_of(k)?;
        Some(self.value_mut(i))
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(k).0.is_some()
    }

    /// Inserts a value; returns the one the key had.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.writable("insert");
        match self.find(&k) {
            (Some(pos), _) => {
                let i = self.index.slot_at(pos);
                Some(std::mem::replace(self.value_mut(i), v))
            }
            (None, hash) => {
                let i = self.new_slot(k, v);
                self.index.insert(hash, i);
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.writable("remove");
        let pos = self.find(k).0?;
        let i = self.index.remove_at(pos);
        let p = self.free_slot(i);
        // SAFETY: the slot was of this version (converted by `free_slot`) and no longer holds it.
        Some(*unsafe { Box::from_raw(p) })
    }

    /// The value of `k`, inserted with `f` if the key has none.
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        self.writable("get_or_insert_with");
        let i = match self.find(&k) {
            (Some(pos), _) => self.index.slot_at(pos),
            (None, hash) => {
                let i = self.new_slot(k, f());
                self.index.insert(hash, i);
                i
            }
        };
        self.value_mut(i)
    }

    pub fn reserve(&mut self, n: usize) {
        self.index.reserve(n);
        self.slots.reserve(n.saturating_sub(self.free.len()));
    }
}

/// The plain form: a map of keys to values.
pub(super) struct Plain<K, V, S>(pub(super) PhantomData<(K, V, S)>);

impl<'de, K, V, S> serde::de::Visitor<'de> for Plain<K, V, S>
where
    K: serde::Deserialize<'de> + Eq + Hash,
    V: serde::Deserialize<'de>,
    S: BuildHasher + Default,
{
    type Value = LazyMap<K, V, S>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
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
