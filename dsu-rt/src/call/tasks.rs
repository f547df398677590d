//! The async calls in flight on one instance, by method: a thread's call stack names the
//! sync calls an update waits for, but a task suspended at an `.await` is on no thread's
//! stack, so each async call that suspends leaves its method here from its first `Pending`
//! to its end.
//!
//! Sharded like the gate's reader counts: a call records itself in the shard of the thread
//! that first polled it, so calls from different threads rarely touch the same cache line.

use std::sync::Mutex;

use super::thread::STRIPES;
use crate::abi::desc::MethodDesc;

#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<Vec<&'static MethodDesc>>);

/// See the module documentation.
#[derive(Default)]
pub(crate) struct TaskCalls {
    shards: [Shard; STRIPES],
}

impl TaskCalls {
    pub(crate) fn add(&self, shard: usize, method: &'static MethodDesc) {
        lock(&self.shards[shard % STRIPES].0).push(method);
    }

    pub(crate) fn remove(&self, shard: usize, method: &'static MethodDesc) {
        let mut v = lock(&self.shards[shard % STRIPES].0);
        if let Some(i) = v.iter().position(|m| std::ptr::eq(*m, method)) {
            v.swap_remove(i);
        }
    }

    /// Every async call in flight, by method (a snapshot).
    pub(crate) fn snapshot(&self) -> Vec<&'static MethodDesc> {
        self.shards
            .iter()
            .flat_map(|s| lock(&s.0).clone())
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
