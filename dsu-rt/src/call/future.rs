//! Async calls: a `async fn` method of a component, called through a handle.
//!
//! A call is in flight from its first poll until its future completes or is dropped: the first
//! poll enters the instance's gate ([`Gate::poll_enter`]: a task kept out by a `&mut self`
//! call or a pending update waits through its waker, never by parking the thread), and the
//! gate is held across every `.await` of the method's body, as a `tokio::sync::RwLock` guard
//! would be. While the body is being polled the call is on the polling thread's call stack,
//! so calls it makes to other components are nested calls (they pass a pending update, which
//! is what keeps a multi-component update free of deadlock) and a re-entrant call is a panic,
//! not a hang.
//!
//! A future dropped mid-way (cancelled by `select!`, `tokio::time::timeout`, or its task
//! being aborted) drops the method's body first, then leaves the gate: the instance is free at
//! once. Dropping does not poison, not even a `&mut self` call: the method may have stopped
//! at any `.await` (cancellation safety is the method's to give, as with any async code that
//! holds a lock across an `.await`). A panic in the body poisons a `&mut self` call, as in a
//! sync call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::component::{RawHandle, Slot};
use super::gate::{self, Access, Gate};
use super::invoke::poison_after_panic;
use super::thread;
use crate::abi::desc::{CallResult, MethodDesc, Receiver};

/// What an async method's table entry returns: the method's future, boxed (its type differs
/// from version to version), catching a panic at each poll on the callee's side.
pub type CallFuture<R> = Pin<Box<dyn Future<Output = CallResult<R>> + Send + 'static>>;

/// Boxes an async method's future for its table entry (see [`CallFuture`]).
pub fn call_future<F>(f: F) -> CallFuture<F::Output>
where
    F: Future + Send + 'static,
{
    Box::pin(CatchUnwind(f))
}

/// The entry of an async method that a stale caller reached (see `invoke::stale_call`).
pub fn stale_call_future<R: Send + 'static>(
    component: &'static str,
    method: &'static str,
) -> CallFuture<R> {
    Box::pin(std::future::ready(super::invoke::stale_call(
        component, method,
    )))
}

struct CatchUnwind<F>(F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = CallResult<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: the inner future is never moved out of the pinned wrapper.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

/// An entered async call: holds the gate (and its record among the instance's async calls)
/// until dropped.
pub struct AsyncCall<'a> {
    slot: &'a Slot,
    method: &'static MethodDesc,
    access: Access,
    stripe: usize,
    /// Whether it is in the instance's async calls (`call/tasks.rs`): from the first time its
    /// body returned `Pending`. A call that completes in one poll is on the polling thread's
    /// stack the whole time, which names it, and never pays for the record.
    recorded: bool,
}

/// Enters the gate of the instance behind a handle: see [`AsyncCall::enter`].
pub struct Enter<'a> {
    raw: &'a RawHandle,
    method: &'static MethodDesc,
}

impl<'a> AsyncCall<'a> {
    /// Enters `method` on the component behind `raw`, waiting (through the task's waker) while
    /// the gate keeps the call out.
    #[inline]
    pub fn enter(raw: &'a RawHandle, method: &'static MethodDesc) -> Enter<'a> {
        Enter { raw, method }
    }

    /// The running table's entry for `method` (as [`Call::entry`](super::invoke::Call::entry)).
    #[inline]
    pub fn entry(&self, method: &'static MethodDesc) -> unsafe fn() {
        // SAFETY: table pointers always come from leaked `Table`s; the gate is held (entered
        // with Acquire), so the table is the one installed with the state.
        let table = unsafe { &*self.slot.table.load(std::sync::atomic::Ordering::Relaxed) };
        match table.entries.get(method.cell.get()) {
            Some(f) => f.get(),
            None => panic!(
                "dsu: method `{}` has no entry in the running table (its version was never \
                 loaded)",
                method.name
            ),
        }
    }

    /// The state pointer, of the type the running table's entries expect.
    #[inline]
    pub fn state(&self) -> *mut () {
        self.slot.state.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs the method's future (what its entry returned) with the gate held; the call ends
    /// when it completes or is dropped.
    #[inline]
    pub fn drive<R>(self, fut: CallFuture<R>) -> Drive<'a, R> {
        Drive {
            fut: Some(fut),
            call: self,
        }
    }
}

impl<'a> Future for Enter<'a> {
    type Output = AsyncCall<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AsyncCall<'a>> {
        let slot = &*self.raw.slot;
        let method = self.method;
        let access = match method.receiver {
            Receiver::Shared => Access::Shared,
            Receiver::Exclusive => Access::Exclusive,
        };
        let me = thread::current();
        // SAFETY: `current()` returns null or this thread's live info.
        let nested = unsafe { me.as_ref() }.is_some_and(|t| t.depth() > 0);
        let stripe = gate::stripe_of(me);
        if slot
            .gate
            .poll_enter(access, me, stripe, nested, method.name, cx)
            .is_pending()
        {
            return Poll::Pending;
        }
        let call = AsyncCall {
            slot,
            method,
            access,
            stripe,
            recorded: false,
        };
        if !slot
            .poisoned
            .load(std::sync::atomic::Ordering::Relaxed)
            .is_null()
        {
            // Leaves the gate as the panic unwinds through `call`'s drop.
            super::invoke::panic_poisoned(slot, method);
        }
        Poll::Ready(call)
    }
}

impl Drop for AsyncCall<'_> {
    fn drop(&mut self) {
        if self.recorded {
            self.slot.tasks.remove(self.stripe, self.method);
        }
        self.slot.gate.leave(self.access, self.stripe);
    }
}

/// The method's future, driven with the gate held (see [`AsyncCall::drive`]).
pub struct Drive<'a, R> {
    // Declared before `call`: dropped first, so the body (which borrows the state) ends
    // before the gate is left.
    fut: Option<CallFuture<R>>,
    call: AsyncCall<'a>,
}

impl<R> Future for Drive<'_, R> {
    type Output = CallResult<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult<R>> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            panic!("dsu: an async call's future was polled after it completed");
        };
        // On this thread's call stack while the body runs (see the module documentation).
        let me = thread::current();
        // SAFETY: `current()` returns null or this thread's live info.
        let info = unsafe { me.as_ref() };
        let depth = info.map(|t| {
            t.push(
                &this.call.slot.gate as *const Gate as *const (),
                this.call.method,
            )
        });
        let r = fut.as_mut().poll(cx);
        if let (Some(t), Some(d)) = (info, depth) {
            t.pop(d);
        }
        match r {
            Poll::Pending => {
                // Suspended: on no thread's stack until polled again.
                if !this.call.recorded {
                    this.call.slot.tasks.add(this.call.stripe, this.call.method);
                    this.call.recorded = true;
                }
                Poll::Pending
            }
            Poll::Ready(r) => {
                if let Err(p) = &r {
                    poison_after_panic(this.call.slot, this.call.access, this.call.method, &**p);
                }
                this.fut = None;
                Poll::Ready(r)
            }
        }
    }
}
