//! The call path: what a call through a component handle touches, and the registries it needs.
//!
//! `thread` tracks each thread's calls and parks registered threads at their update points;
//! `gate` is each instance's gate (shared and exclusive entry, closed by an update);
//! `component` holds component types, instances, tables and handles, and `invoke` the call
//! itself (`future` an async call, `tasks` the async calls in flight); `global` and `protocol` are `#[dsu::global]` and `#[dsu::protocol]`; `incoming` is
//! the state a hand-off streamed, taken at registration. Imports: `abi` only.

pub(crate) mod component;
pub(crate) mod future;
pub(crate) mod gate;
pub(crate) mod global;
pub(crate) mod incoming;
pub(crate) mod invoke;
pub(crate) mod protocol;
pub(crate) mod tasks;
pub(crate) mod thread;
