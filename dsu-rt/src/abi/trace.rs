//! `tracing` across a patch that has its own copy of tracing-core.
//!
//! Without the shared library (`dsu-shared`), a patch's tracing macros go to its own copy of
//! tracing-core, whose dispatcher is unset: every event and span would be lost. The patch
//! therefore installs [`Forward`] as its copy's global dispatcher, and it hands each call to
//! the host's *current* dispatcher on the calling thread (a scoped one if the host set one
//! there, else the global one), looked up afresh every time. Span ids are the host's, so a
//! span opened in patched code nests under the caller's, and an event in patched code is
//! recorded inside the caller's span.
//!
//! Both copies are the same build of tracing-core (the loader checks `dependency_builds`), so
//! the host's code reads the patch's `Event` and `Attributes` with the layout it expects.

use tracing_core::span::{Attributes, Current, Id, Record};
use tracing_core::subscriber::{Interest, Subscriber};
use tracing_core::{Dispatch, Event, LevelFilter, Metadata};

/// Runs `f` with the host's current dispatcher on this thread (host side).
pub(crate) type WithDispatch = fn(&mut dyn FnMut(&Dispatch));

/// The host's [`WithDispatch`].
pub(crate) fn host_with_dispatch(f: &mut dyn FnMut(&Dispatch)) {
    tracing_core::dispatcher::get_default(|d| f(d));
}

/// The patch's dispatcher: every call goes to the host's current one.
pub(crate) struct Forward {
    host: WithDispatch,
}

impl Forward {
    fn with<R>(&self, f: impl FnOnce(&Dispatch) -> R) -> R {
        let mut f = Some(f);
        let mut out = None;
        (self.host)(&mut |d| {
            if let Some(f) = f.take() {
                out = Some(f(d));
            }
        });
        out.expect("the host runs the closure once")
    }
}

impl Subscriber for Forward {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // The host's subscriber may change after this callsite's interest is cached (and the
        // host's re-registration never reaches the patch's callsites), so ask each time.
        // So the host's subscriber hears of it (it may keep per-callsite state), but the
        // answer is always `sometimes`.
        self.with(|d| d.register_callsite(metadata));
        Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // No hint: the host's filter may widen later; `enabled` decides each time.
        None
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.with(|d| d.enabled(metadata))
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.with(|d| d.new_span(span))
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.with(|d| d.record(span, values))
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.with(|d| d.record_follows_from(span, follows))
    }

    fn event(&self, event: &Event<'_>) {
        self.with(|d| d.event(event))
    }

    fn enter(&self, span: &Id) {
        self.with(|d| d.enter(span))
    }

    fn exit(&self, span: &Id) {
        self.with(|d| d.exit(span))
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.with(|d| d.clone_span(id))
    }

    fn try_close(&self, id: Id) -> bool {
        self.with(|d| d.try_close(id))
    }

    fn current_span(&self) -> Current {
        self.with(|d| d.current_span())
    }
}

/// Points the patch's copy of tracing-core at the host (patch side, before any of its code
/// runs). A patch that shares the host's tracing-core (`dsu-shared`) must not call this: its
/// global dispatcher is the host's.
pub(crate) fn adopt(host: WithDispatch) {
    // Fails only if something in the patch set a global dispatcher already, which nothing
    // can have done before `adopt`.
    let _ = tracing_core::dispatcher::set_global_default(Dispatch::new(Forward { host }));
}
