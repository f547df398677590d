//! State received by a process that a hand-off started, taken by the call layer: `register`
//! replaces the value `main` built with its instance's streamed state, and a global's first use
//! takes its streamed value.
//!
//! The hand-off engine (`handoff/`, a layer above) decodes the stream and installs the two
//! functions that hand the states out; until it does, and in every process not started by a
//! hand-off, nothing was received.

use std::sync::OnceLock;

use crate::abi::desc::{GlobalDesc, StateLayout};

/// How the received state is handed out (see the module documentation).
pub(crate) struct Incoming {
    /// The streamed state of the next instance of component `id`, whose state type `layout`
    /// describes, as a box of that type; `None` when nothing was streamed for it.
    pub(crate) component: fn(id: &str, layout: &'static StateLayout) -> Option<*mut ()>,
    /// A global's streamed value, as a box of its type.
    pub(crate) global: fn(desc: &'static GlobalDesc) -> Option<*mut ()>,
}

static INCOMING: OnceLock<Incoming> = OnceLock::new();

/// Installs the hand-off's functions; a second call changes nothing.
pub(crate) fn install(incoming: Incoming) {
    let _ = INCOMING.set(incoming);
}

pub(crate) fn take_component(id: &str, layout: &'static StateLayout) -> Option<*mut ()> {
    (INCOMING.get()?.component)(id, layout)
}

pub(crate) fn take_global(desc: &'static GlobalDesc) -> Option<*mut ()> {
    (INCOMING.get()?.global)(desc)
}
