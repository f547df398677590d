//! The data: keys and their entries.

use std::collections::HashMap;

#[dsu::state]
pub struct Entry {
    pub value: Vec<u8>,
}

#[dsu::state]
#[derive(Default)]
pub struct Keyspace {
    map: HashMap<Vec<u8>, Entry>,
}

#[dsu::component]
impl Keyspace {
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).map(|e| e.value.clone())
    }

    pub fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.map.insert(key, Entry { value });
    }

    pub fn del(&mut self, key: &[u8]) -> bool {
        self.map.remove(key).is_some()
    }

    pub fn exists(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Adds `by` to the integer at `key` (0 when missing).
    pub fn incr(&mut self, key: Vec<u8>, by: i64) -> Result<i64, String> {
        let current = match self.map.get(&key) {
            None => 0,
            Some(e) => std::str::from_utf8(&e.value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| "ERR value is not an integer or out of range".to_string())?,
        };
        let next = current
            .checked_add(by)
            .ok_or_else(|| "ERR increment or decrement would overflow".to_string())?;
        self.map.insert(key, Entry { value: next.to_string().into_bytes() });
        Ok(next)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}
