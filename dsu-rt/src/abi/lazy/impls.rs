//! The std and serde traits of [`LazyMap`].

use std::fmt;
use std::hash::{BuildHasher, Hash};

use super::LazyMap;

impl<K: Eq + Hash, V, S: BuildHasher> Extend<(K, V)> for LazyMap<K, V, S> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, it: I) {
        for (k, v) in it {
            self.insert(k, v);
        }
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> FromIterator<(K, V)> for LazyMap<K, V, S> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(it: I) -> Self {
        let mut m = Self::default();
        m.extend(it);
        m
    }
}

impl<K: Eq + Hash + Clone, V: Clone, S: BuildHasher + Clone> Clone for LazyMap<K, V, S> {
    fn clone(&self) -> Self {
        let mut m = Self::with_capacity_and_hasher(self.len(), self.hasher().clone());
        for (k, v) in self.iter() {
            m.insert(k.clone(), v.clone());
        }
        m
    }
}

impl<K: fmt::Debug, V: fmt::Debug, S> fmt::Debug for LazyMap<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Eq + Hash, V: PartialEq, S: BuildHasher> PartialEq for LazyMap<K, V, S> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// Carried by a hand-off as a map of its keys and (converted) values, or, in a pre-copying
/// hand-off, as the slots not yet sent (`precopy.rs`).
impl<K: serde::Serialize, V: serde::Serialize, S> serde::Serialize for LazyMap<K, V, S> {
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        #[cfg(not(dsu_off))]
        return super::precopy::serialize(self, s);
        #[cfg(dsu_off)]
        s.collect_map(self.iter())
    }
}

impl<'de, K, V, S> serde::Deserialize<'de> for LazyMap<K, V, S>
where
    K: serde::Deserialize<'de> + Eq + Hash + Send + 'static,
    V: serde::Deserialize<'de> + Send + 'static,
    S: BuildHasher + Default + Send + 'static,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[cfg(not(dsu_off))]
        return super::mirror::deserialize(d);
        #[cfg(dsu_off)]
        d.deserialize_map(super::keyed::Plain(std::marker::PhantomData))
    }
}
