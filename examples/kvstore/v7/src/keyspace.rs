//! The data: keys and their entries.

use std::collections::HashMap;

#[dsu::state]
pub struct Entry {
    pub value: Vec<u8>,
    /// When the key expires (milliseconds since the Unix epoch), if it does.
    pub expires_at: Option<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn live(e: &Entry) -> bool {
    e.expires_at.is_none_or(|t| t > now_ms())
}

#[dsu::state]
#[derive(Default)]
pub struct Keyspace {
    map: HashMap<Vec<u8>, Entry>,
}

#[dsu::component]
impl Keyspace {
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).filter(|e| live(e)).map(|e| e.value.clone())
    }

    /// Sets a value, with a time to live in milliseconds if given.
    pub fn set(&mut self, key: Vec<u8>, value: Vec<u8>, ttl_ms: Option<u64>) {
        self.map.insert(
            key,
            Entry {
                value,
                expires_at: ttl_ms.map(|ms| now_ms() + ms),
            },
        );
    }

    pub fn del(&mut self, key: &[u8]) -> bool {
        self.map.remove(key).is_some_and(|e| live(&e))
    }

    pub fn exists(&self, key: &[u8]) -> bool {
        self.map.get(key).is_some_and(live)
    }

    /// Sets a key's time to live; false when the key does not exist.
    pub fn expire(&mut self, key: &[u8], ms: u64) -> bool {
        match self.map.get_mut(key).filter(|e| live(e)) {
            Some(e) => {
                e.expires_at = Some(now_ms() + ms);
                true
            }
            None => false,
        }
    }

    /// Remaining time to live in milliseconds: -2 no such key, -1 no expiry.
    pub fn ttl_ms(&self, key: &[u8]) -> i64 {
        match self.map.get(key).filter(|e| live(e)) {
            None => -2,
            Some(Entry { expires_at: None, .. }) => -1,
            Some(Entry { expires_at: Some(t), .. }) => t.saturating_sub(now_ms()) as i64,
        }
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
        let expires_at = self.map.get(&key).and_then(|e| e.expires_at);
        self.map.insert(
            key,
            Entry {
                value: next.to_string().into_bytes(),
                expires_at,
            },
        );
        Ok(next)
    }

    pub fn len(&self) -> usize {
        self.map.values().filter(|e| live(e)).count()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}
