//! The call itself: entering a method through an instance's gate and table, catching a panic
//! on the callee's side of the boundary, and the hooks the update manager calls.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::component::{RawHandle, Slot, WATCH_COUNT, WATCH_POISON};
use super::gate::{self, Access, Gate};
use super::thread::{self, Frame, ThreadInfo};
use crate::abi::desc::{payload_message, CallResult, MethodDesc, Receiver};

/// An entered call: holds the gate and the thread's call-stack entry until dropped.
pub struct Call<'a> {
    slot: &'a Slot,
    thread: *const ThreadInfo,
    frame: Frame,
    stripe: usize,
    access: Access,
}

impl<'a> Call<'a> {
    /// Enters `method` on the component behind `raw`.
    #[inline(always)]
    pub fn enter(raw: &'a RawHandle, method: &'static MethodDesc) -> Call<'a> {
        Self::enter_with(raw, method, false)
    }

    /// `force_nested`: the update manager calling a `prepare_to_die` hook passes the pending
    /// gate as a nested call would.
    #[inline(always)]
    pub(crate) fn enter_with(
        raw: &'a RawHandle,
        method: &'static MethodDesc,
        force_nested: bool,
    ) -> Call<'a> {
        let slot = &*raw.slot;
        let access = match method.receiver {
            Receiver::Shared => Access::Shared,
            Receiver::Exclusive => Access::Exclusive,
        };
        let thread = thread::current();
        // SAFETY: `current()` returns null or this thread's live info.
        let info = unsafe { thread.as_ref() };
        let now = info.map_or(Frame::NONE, ThreadInfo::frame);
        let nested = force_nested || now.depth() > 0;
        let stripe = gate::stripe_of(thread);
        slot.gate.enter(access, thread, stripe, nested, method.name);
        let frame = match info {
            Some(t) => t.push_on(now, &slot.gate as *const Gate as *const (), method),
            None => Frame::NONE,
        };
        if owner_untracked(access, thread, frame) {
            slot.gate.set_owner(thread);
        }
        // Relaxed: the bits are set by the policy loop (a statistics switch) and by a call that
        // held the gate before this one entered it (the poison). Checked before the `Call`
        // exists, so that it is built in its final place, not spilled and copied (which stalled
        // store forwarding and cost 9 ns a call).
        if slot.watch.load(Ordering::Relaxed) != 0 {
            watched(slot, access, thread, frame, stripe, method);
        }
        Call {
            slot,
            thread,
            frame,
            stripe,
            access,
        }
    }

    /// The callee panicked (its panic was caught and is resumed by [`finish`] on the caller's
    /// side): a panic in a `&mut self` method poisons the component (not one in a `&self`
    /// method, nor a call that never ran because its version removed the method).
    #[cold]
    #[inline(never)]
    pub fn panicked(&self, method: &'static MethodDesc, payload: &(dyn std::any::Any + Send)) {
        poison_after_panic(self.slot, self.access, method, payload);
    }

    /// The running table's entry for `method`.
    #[inline(always)]
    pub fn entry(&self, method: &'static MethodDesc) -> unsafe fn() {
        // Relaxed: the table is only swapped while the manager holds the gate, and entering
        // the gate (Acquire) synchronised with the manager's release.
        // SAFETY: table pointers always come from leaked `Table`s.
        let table = unsafe { &*self.slot.table.load(Ordering::Relaxed) };
        match table.entries.get(method.cell.get()) {
            Some(f) => f.get(),
            None => unresolved(method.name),
        }
    }

    /// The state pointer, of the type the running table's entries expect.
    #[inline(always)]
    pub fn state(&self) -> *mut () {
        // Relaxed: as for `entry`.
        self.slot.state.load(Ordering::Relaxed)
    }
}

/// Whether an exclusive call must name its thread as the gate's owner: one deeper than the
/// tracked part of the call stack, where [`ThreadInfo::is_inside_exclusive`] cannot see it (a
/// re-entrant call would otherwise deadlock instead of panicking).
#[inline(always)]
fn owner_untracked(access: Access, thread: *const ThreadInfo, frame: Frame) -> bool {
    access == Access::Exclusive && !thread.is_null() && frame.depth() as usize >= thread::TRACKED
}

/// A call on a watched instance: count it for a rate-bound policy, refuse it if poisoned (the
/// call entered already: the panic leaves the gate as it unwinds).
#[cold]
#[inline(never)]
fn watched(
    slot: &Slot,
    access: Access,
    thread: *const ThreadInfo,
    frame: Frame,
    stripe: usize,
    method: &'static MethodDesc,
) {
    // Relaxed: as in `Call::enter_with`; the counter is sampled, exactness is not needed.
    if slot.watch.load(Ordering::Relaxed) & WATCH_COUNT != 0 {
        slot.calls.fetch_add(1, Ordering::Relaxed);
    }
    if !slot.poisoned.load(Ordering::Relaxed).is_null() {
        // Dropped as the panic unwinds: leaves the gate and the call stack.
        let _call = Call {
            slot,
            thread,
            frame,
            stripe,
            access,
        };
        panic_poisoned(slot, method);
    }
}

/// The panic of a call on a poisoned instance.
#[cold]
#[inline(never)]
pub(crate) fn panic_poisoned(slot: &Slot, method: &'static MethodDesc) -> ! {
    // Relaxed: set by a call that held the gate before this one entered it.
    let by = slot.poisoned.load(Ordering::Relaxed);
    // SAFETY: method descriptors are statics of the host or of a never-unloaded patch.
    let by = unsafe { by.as_ref() }.map_or("?", |m| m.name);
    panic!(
        "dsu: component `{}` is poisoned: an earlier call of `{by}` (a `&mut self` method) \
         panicked and may have left its state half-changed, so `{}` is not run; the program \
         may check the state and call `Handle::clear_poison`",
        slot.ty.id, method.name
    )
}

/// A call's body panicked: a `&mut self` call poisons the instance (not a `&self` call, nor a
/// call that never ran because its version removed the method).
#[cold]
#[inline(never)]
pub(crate) fn poison_after_panic(
    slot: &Slot,
    access: Access,
    method: &'static MethodDesc,
    payload: &(dyn std::any::Any + Send),
) {
    let stale = payload
        .downcast_ref::<String>()
        .is_some_and(|m| m.starts_with(STALE_CALL));
    if access == Access::Exclusive && !stale {
        // Relaxed: published to later callers by the gate's release when the call ends.
        slot.poisoned.store(
            method as *const MethodDesc as *mut MethodDesc,
            Ordering::Relaxed,
        );
        slot.watch.fetch_or(WATCH_POISON, Ordering::Relaxed);
    }
}

#[cold]
fn unresolved(name: &str) -> ! {
    panic!("dsu: method `{name}` has no entry in the running table (its version was never loaded)")
}

impl Drop for Call<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `thread` is null or this thread's live info (a Call never leaves its thread).
        if let Some(t) = unsafe { self.thread.as_ref() } {
            t.pop(self.frame);
        }
        if owner_untracked(self.access, self.thread, self.frame) {
            self.slot.gate.clear_owner();
        }
        self.slot.gate.leave(self.access, self.stripe);
    }
}

/// Runs a method body on the callee's side of the boundary, catching a panic so it can be
/// handed to the caller's copy of std (see [`finish`]).
#[inline]
pub fn catch<R>(f: impl FnOnce() -> R) -> CallResult<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// Returns a table entry's value on the caller's side, resuming a panic caught on the callee's
/// (after [`Call::panicked`] has seen it and the call has ended).
#[inline]
pub fn finish<R>(r: CallResult<R>) -> R {
    match r {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The body of every generated trap: a stale caller reached a method its version removed or
/// changed.
pub fn stale_call<R>(component: &'static str, method: &'static str) -> CallResult<R> {
    Err(Box::new(format!(
        "{STALE_CALL}`{component}::{method}` was removed or changed its signature in an \
         update; this caller is running code of an older version"
    )))
}

/// How the message of a call to a removed method starts (such a call does not poison).
const STALE_CALL: &str = "dsu: stale call: ";

/// Calls a `prepare_to_die` hook through the normal call path (the manager's thread counts as
/// inside a call, so it passes the pending gate).
pub(crate) fn call_hook(slot: &Arc<Slot>, index: usize) -> Result<(), String> {
    let table = slot.current_table();
    let method = &table.desc.methods[index];
    let raw = RawHandle { slot: slot.clone() };
    let call = Call::enter_with(&raw, method, true);
    let f = call.entry(method);
    // SAFETY: hooks take no arguments and return `()`: the macro only accepts that signature
    // for `prepare_to_die`, so the entry has this type.
    let f: unsafe fn(*mut ()) -> CallResult<()> = unsafe { std::mem::transmute(f) };
    // SAFETY: the entry is called with the state of the version it belongs to, gate held.
    let r = unsafe { f(call.state()) };
    drop(call);
    r.map_err(|p| payload_message(&*p))
}

/// Calls a `migrate` or `health_check` hook (`fn(&mut self | &self) -> Result<(), String>`) of
/// the version installed in `slot`, while the update manager holds the slot's gate (so no gate
/// is entered: the manager's hold is the exclusive access). A panic is an `Err`.
pub(crate) fn call_check_locked(slot: &Slot, index: usize) -> Result<(), String> {
    let table = slot.current_table();
    let method = &table.desc.methods[index];
    let Some(entry) = table.entries.get(method.cell.get()) else {
        return Err(format!(
            "the `{}` hook has no entry in the new table",
            method.name
        ));
    };
    // SAFETY: the macro accepts `migrate` and `health_check` only with this return type and no
    // arguments, so the entry has this type (every entry takes the state as `*mut ()`).
    let f: unsafe fn(*mut ()) -> CallResult<Result<(), String>> =
        unsafe { std::mem::transmute(entry.get()) };
    // Calls the hook makes are nested calls of the update.
    // SAFETY: `current()` returns null or this thread's live info.
    let info = unsafe { thread::current().as_ref() };
    let depth = info.map(|t| t.push(&slot.gate as *const Gate as *const (), method));
    // SAFETY: the state belongs to the installed version; the manager holds the gate exclusively.
    let r = unsafe { f(slot.state.load(Ordering::Relaxed)) };
    if let (Some(t), Some(d)) = (info, depth) {
        t.pop(d);
    }
    match r {
        Ok(r) => r,
        Err(p) => Err(format!("panicked: {}", payload_message(&*p))),
    }
}

/// Runs `f` on the instance's state with the gate held exclusively, as a `&mut self` call from
/// outside any call would (it waits for a pending update like one): the runtime's own work on a
/// running component (the background conversion of lazy maps).
pub(crate) fn with_exclusive<R>(slot: &Slot, who: &str, f: impl FnOnce(*mut ()) -> R) -> R {
    struct Leave<'a>(&'a Gate, usize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.clear_owner();
            self.0.leave(Access::Exclusive, self.1);
        }
    }
    let me = thread::current();
    let stripe = gate::stripe_of(me);
    slot.gate.enter(Access::Exclusive, me, stripe, false, who);
    // Not on the call stack: only the owner tells a re-entrant call from `f` that it would
    // deadlock.
    slot.gate.set_owner(me);
    let _leave = Leave(&slot.gate, stripe);
    // Relaxed: as in `Call::state`.
    f(slot.state.load(Ordering::Relaxed))
}
