//! Per-thread call tracking, registered threads and update points.
//!
//! Every thread that calls into a component has a [`ThreadInfo`], owned by a thread-local of
//! the *host*. A patch has its own copy of this crate, and so its own thread-locals; after
//! adoption, a patch reaches the host's through [`FORWARD`]. Without that, a nested call made
//! from patched code would look like an outer call and wait at a pending gate that the update
//! manager, in turn, waits to drain: a deadlock.
//!
//! Orderings: the fields of `ThreadInfo` are written only by the owning thread and read by
//! others only for diagnostics (the "who was busy" report), so they are `Relaxed`. Parking
//! state is protected by the [`Parking`] mutex.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::abi::desc::{MethodDesc, Receiver};
use crate::abi::shared::Shared;

/// How many nested calls per thread are tracked for reports (deeper calls still work).
pub(crate) const TRACKED: usize = 8;

/// Reader stripes per gate (`gate.rs`). Threads are assigned stripes round-robin, so up to this
/// many threads calling at once never share a counter.
pub(crate) const STRIPES: usize = 8;

/// What [`ThreadInfo::push`] hands back for the matching `pop`: the frame word before the call.
#[derive(Clone, Copy)]
pub(crate) struct Frame(u64);

impl Frame {
    /// The frame of a call on a thread the runtime no longer tracks (being torn down).
    pub(crate) const NONE: Frame = Frame(0);

    /// The depth the call was made at (0: an outer call).
    #[inline]
    pub(crate) fn depth(self) -> u32 {
        self.0 as u32
    }
}

/// What the runtime knows about one thread.
pub struct ThreadInfo {
    pub(crate) name: String,
    pub(crate) os_tid: i64,
    /// The call stack's frame word: the nesting depth of dsu calls in the low 32 bits, and in
    /// the high 32 bits a count of outer calls (so a report can tell one long call from many
    /// short ones). One word, so that entering a call is one load and one store of it.
    pub(crate) frame: AtomicU64,
    pub(crate) methods: [AtomicPtr<MethodDesc>; TRACKED],
    /// Erased `*const Slot` of each tracked call.
    pub(crate) slots: [AtomicPtr<()>; TRACKED],
    pub(crate) registered: AtomicBool,
    /// The reader stripe this thread's shared calls count in (see `gate`).
    pub(crate) stripe: usize,
    /// Set while the thread is parked at an update point. Written under the [`Parking`] mutex.
    pub(crate) quiescent: Cell<bool>,
}

// SAFETY: `quiescent` is the only non-Sync field; it is only read and written with the
// `Parking` mutex held.
unsafe impl Sync for ThreadInfo {}

impl ThreadInfo {
    fn new() -> Self {
        let t = std::thread::current();
        ThreadInfo {
            name: t
                .name()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{:?}", t.id())),
            // SAFETY: gettid has no preconditions.
            os_tid: unsafe { libc::gettid() } as i64,
            frame: AtomicU64::new(0),
            methods: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            registered: AtomicBool::new(false),
            // Relaxed: a round-robin ticket; any value is correct, distinct ones are faster.
            stripe: NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES,
            quiescent: Cell::new(false),
        }
    }

    /// Nesting depth of dsu calls on this thread.
    #[inline]
    pub(crate) fn depth(&self) -> u32 {
        self.frame().depth()
    }

    /// The count of outer calls this thread has made (wraps; it only tells calls apart).
    pub(crate) fn outer_calls(&self) -> u64 {
        self.frame.load(Ordering::Relaxed) >> 32
    }

    /// The frame word, for [`push_on`](Self::push_on): a caller that has read the depth already
    /// gives the word it read instead of loading it again.
    #[inline]
    pub(crate) fn frame(&self) -> Frame {
        Frame(self.frame.load(Ordering::Relaxed))
    }

    /// Records a call on this thread's stack. Returns the frame [`pop`](Self::pop) restores.
    #[inline]
    pub(crate) fn push(&self, slot: *const (), method: &'static MethodDesc) -> Frame {
        self.push_on(self.frame(), slot, method)
    }

    /// [`push`](Self::push), given the thread's current [`frame`](Self::frame) (only this thread
    /// writes it, so a word read earlier on this thread is still current).
    #[inline]
    pub(crate) fn push_on(
        &self,
        now: Frame,
        slot: *const (),
        method: &'static MethodDesc,
    ) -> Frame {
        let (w, d) = (now.0, now.depth());
        if (d as usize) < TRACKED {
            self.methods[d as usize].store(method as *const _ as *mut _, Ordering::Relaxed);
            self.slots[d as usize].store(slot as *mut (), Ordering::Relaxed);
        }
        // An outer call counts one more outer call; the depth grows by one either way.
        let restore = if d == 0 { w.wrapping_add(1 << 32) } else { w };
        self.frame.store(restore + 1, Ordering::Relaxed);
        Frame(restore)
    }

    /// Ends the call `push` returned `f` for (calls end in the reverse order they began).
    #[inline]
    pub(crate) fn pop(&self, f: Frame) {
        self.frame.store(f.0, Ordering::Relaxed);
    }

    /// Whether this thread is inside a `&mut self` call on `slot` (a task being polled holds it).
    pub(crate) fn is_inside_exclusive(&self, slot: *const ()) -> bool {
        let d = (self.depth() as usize).min(TRACKED);
        (0..d).any(|i| {
            std::ptr::eq(self.slots[i].load(Ordering::Relaxed), slot) && {
                let m = self.methods[i].load(Ordering::Relaxed);
                // SAFETY: method descriptors are statics of the host or a never-unloaded patch.
                unsafe { m.as_ref() }.is_some_and(|m| m.receiver == Receiver::Exclusive)
            }
        })
    }

    /// Whether this thread is inside a call on `slot` (used to turn a self-deadlock into a panic).
    pub(crate) fn is_inside(&self, slot: *const ()) -> bool {
        let d = (self.depth() as usize).min(TRACKED);
        self.slots[..d]
            .iter()
            .any(|s| std::ptr::eq(s.load(Ordering::Relaxed), slot))
    }
}

/// The per-thread handle kept in the host's thread-local; unregisters the thread when it ends.
struct Current(Arc<ThreadInfo>);

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT_PTR.with(|p| p.set(ptr::null()));
        let reg = registry();
        let mut all = lock(&reg.all);
        all.retain(|t| !Arc::ptr_eq(t, &self.0));
    }
}

/// Hands out reader stripes round-robin.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A copy of `CURRENT`'s pointer: a constant-initialised thread-local without a destructor
    /// is a single load, where `CURRENT` checks its lazy initialisation on every access.
    static CURRENT_PTR: Cell<*const ThreadInfo> = const { Cell::new(ptr::null()) };
    static CURRENT: Current = {
        let info = Arc::new(ThreadInfo::new());
        lock(&registry().all).push(info.clone());
        Current(info)
    };
}

/// In a patch: the host's accessor for the current thread's info; null in the host.
pub(crate) static FORWARD: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());

/// The host's accessor, handed to a patch at adoption.
#[inline(always)]
pub(crate) fn host_current() -> *const ThreadInfo {
    let p = CURRENT_PTR.with(Cell::get);
    if p.is_null() {
        host_current_slow()
    } else {
        p
    }
}

/// First call on this thread (or one during its teardown, which gets null).
#[cold]
fn host_current_slow() -> *const ThreadInfo {
    CURRENT
        .try_with(|c| {
            let p = Arc::as_ptr(&c.0);
            CURRENT_PTR.with(|c| c.set(p));
            p
        })
        .unwrap_or(ptr::null())
}

/// The current thread's info, or null while the thread is being torn down.
#[inline(always)]
pub(crate) fn current() -> *const ThreadInfo {
    // Relaxed: FORWARD is written once at adoption, before any patched code can run.
    let f = FORWARD.load(Ordering::Relaxed);
    if f.is_null() {
        host_current()
    } else {
        // SAFETY: FORWARD only ever holds a `fn() -> *const ThreadInfo` (set in `adopt`).
        let f: fn() -> *const ThreadInfo = unsafe { std::mem::transmute(f) };
        f()
    }
}

pub(crate) struct Registry {
    pub(crate) all: Mutex<Vec<Arc<ThreadInfo>>>,
    pub(crate) parking: Parking,
}

/// Coordinates registered threads and update points.
pub(crate) struct Parking {
    state: Mutex<ParkState>,
    changed: Condvar,
    /// Fast-path flag for `update_point!()`: is a park requested?
    requested: AtomicBool,
}

#[derive(Default)]
struct ParkState {
    /// Registered threads and tasks.
    registered: usize,
    /// Of those, the ones parked at an update point.
    quiescent: usize,
    requested: bool,
    /// Registered tasks (for the report of the ones that did not park).
    tasks: Vec<Arc<TaskInfo>>,
    /// Tasks parked at an update point, woken by `release`.
    wakers: Vec<std::task::Waker>,
}

/// A registered task: its name, and whether it is parked (under the `Parking` mutex).
struct TaskInfo {
    name: String,
    quiescent: AtomicBool,
}

/// The process's thread registry (the host's, also in a patch).
static REGISTRY: Shared<Registry> = Shared::new("threads", Registry::new);

#[inline]
pub(crate) fn registry() -> &'static Registry {
    REGISTRY.get()
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            all: Mutex::new(Vec::new()),
            parking: Parking {
                state: Mutex::new(ParkState::default()),
                changed: Condvar::new(),
                requested: AtomicBool::new(false),
            },
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of the runtime's locks leaves data that is still consistent
    // (every critical section is a few assignments), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered thread; dropping it unregisters the thread.
///
/// Registered threads are the ones an update may require to be parked at an update point
/// (`dsu::update_point!()`) before it is applied.
pub struct ThreadRegistration {
    info: Arc<ThreadInfo>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        let p = &registry().parking;
        let mut st = lock(&p.state);
        self.info.registered.store(false, Ordering::Relaxed);
        st.registered -= 1;
        p.changed.notify_all();
    }
}

/// Registers the current thread (see [`ThreadRegistration`]).
pub fn register_thread() -> ThreadRegistration {
    let info = CURRENT.with(|c| c.0.clone());
    let p = &registry().parking;
    let mut st = lock(&p.state);
    assert!(
        !info.registered.swap(true, Ordering::Relaxed),
        "dsu: this thread is already registered with the runtime"
    );
    st.registered += 1;
    ThreadRegistration {
        info,
        _not_send: std::marker::PhantomData,
    }
}

/// `dsu::update_point!()`: parks the thread while an update that requires it is applied.
#[inline]
pub fn update_point() {
    // Relaxed: a stale `false` only delays parking to the next update point; the slow path
    // re-checks under the mutex.
    if registry().parking.requested.load(Ordering::Relaxed) {
        park_here();
    }
}

#[cold]
fn park_here() {
    let t = current();
    if t.is_null() {
        return;
    }
    // SAFETY: `current()` returns the live info of this thread.
    let t = unsafe { &*t };
    // Not a safe point inside a call, or for a thread the runtime does not wait for.
    if t.depth() > 0 || !t.registered.load(Ordering::Relaxed) {
        return;
    }
    let p = &registry().parking;
    let mut st = lock(&p.state);
    if !st.requested {
        return;
    }
    set_quiescent(&mut st, t, true);
    p.changed.notify_all();
    while st.requested {
        st = p.changed.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    set_quiescent(&mut st, t, false);
}

fn set_quiescent(st: &mut ParkState, t: &ThreadInfo, q: bool) {
    if t.quiescent.get() != q && t.registered.load(Ordering::Relaxed) {
        if q {
            st.quiescent += 1;
        } else {
            st.quiescent -= 1;
        }
    }
    t.quiescent.set(q);
}

impl Parking {
    /// Asks registered threads to park; returns once all are quiescent or at `deadline`.
    pub(crate) fn request_and_wait(&self, deadline: Instant) -> Result<(), (usize, usize)> {
        let mut st = lock(&self.state);
        st.requested = true;
        // Relaxed: see `update_point`.
        self.requested.store(true, Ordering::Relaxed);
        loop {
            if st.quiescent >= st.registered {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err((st.registered - st.quiescent, st.registered));
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets parked threads and tasks go.
    pub(crate) fn release(&self) {
        let mut st = lock(&self.state);
        st.requested = false;
        self.requested.store(false, Ordering::Relaxed);
        self.changed.notify_all();
        for w in std::mem::take(&mut st.wakers) {
            w.wake();
        }
    }

    /// Registered tasks that are not parked, by name.
    pub(crate) fn busy_tasks(&self) -> Vec<String> {
        let st = lock(&self.state);
        st.tasks
            .iter()
            .filter(|t| !t.quiescent.load(Ordering::Relaxed))
            .map(|t| t.name.clone())
            .collect()
    }

    /// Registered threads that are not parked, by name and tid.
    pub(crate) fn busy_threads(&self, all: &[Arc<ThreadInfo>]) -> Vec<(String, i64)> {
        let _st = lock(&self.state);
        all.iter()
            .filter(|t| t.registered.load(Ordering::Relaxed) && !t.quiescent.get())
            .map(|t| (t.name.clone(), t.os_tid))
            .collect()
    }
}

/// A registered task (see [`register_task`]); dropping it unregisters the task.
///
/// The async counterpart of [`ThreadRegistration`]: an update that requires registered threads
/// to be parked also waits for every registered task to reach
/// [`update_point`](Self::update_point), where it waits (through its waker, without blocking
/// its thread) until the update has been applied or abandoned. A long-lived task, a loop that
/// calls components, awaits its update point once per iteration: after the update, its next
/// iteration calls the new version's code.
pub struct TaskRegistration {
    info: Arc<TaskInfo>,
}

/// Registers a long-lived task under `name` (what an update's report calls it when the task
/// does not reach its update point in time).
pub fn register_task(name: impl Into<String>) -> TaskRegistration {
    let info = Arc::new(TaskInfo {
        name: name.into(),
        quiescent: AtomicBool::new(false),
    });
    let p = &registry().parking;
    let mut st = lock(&p.state);
    st.registered += 1;
    st.tasks.push(info.clone());
    TaskRegistration { info }
}

impl TaskRegistration {
    /// The task's safe point: ready at once unless an update is waiting for registered tasks,
    /// then ready once that update has been applied or abandoned. Not a safe point inside a
    /// component call (it is ready at once there, as `update_point!()` returns at once).
    pub fn update_point(&self) -> TaskUpdatePoint<'_> {
        TaskUpdatePoint {
            info: &self.info,
            parked: false,
        }
    }

    /// Awaits `fut` (a sleep between two iterations, a wait for the next job) with the task
    /// counted as parked: an update that waits for registered tasks goes ahead while the task
    /// is in here, instead of waiting for `fut` to end. When `fut` completes during such an
    /// update, the task waits for the update as at [`update_point`](Self::update_point), so
    /// its next iteration runs the new code. `fut` must not call components (they may be in
    /// the middle of an update); a call from inside it is not prevented, only not safe.
    pub async fn idle<F: std::future::Future>(&self, fut: F) -> F::Output {
        let point = {
            let p = &registry().parking;
            let mut st = lock(&p.state);
            if !self.info.quiescent.swap(true, Ordering::Relaxed) {
                st.quiescent += 1;
                p.changed.notify_all();
            }
            // Counted as parked from here; dropped mid-way (the task cancelled), it is not.
            TaskUpdatePoint {
                info: &self.info,
                parked: true,
            }
        };
        let out = fut.await;
        point.await;
        out
    }
}

impl Drop for TaskRegistration {
    fn drop(&mut self) {
        let p = &registry().parking;
        let mut st = lock(&p.state);
        st.tasks.retain(|t| !Arc::ptr_eq(t, &self.info));
        st.registered -= 1;
        if self.info.quiescent.swap(false, Ordering::Relaxed) {
            st.quiescent -= 1;
        }
        p.changed.notify_all();
    }
}

/// See [`TaskRegistration::update_point`].
pub struct TaskUpdatePoint<'a> {
    info: &'a Arc<TaskInfo>,
    parked: bool,
}

impl std::future::Future for TaskUpdatePoint<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let p = &registry().parking;
        // Relaxed: as in `update_point`; the slow path re-checks under the mutex.
        if !self.parked && !p.requested.load(Ordering::Relaxed) {
            return std::task::Poll::Ready(());
        }
        let t = current();
        // SAFETY: `current()` returns null or this thread's live info.
        if unsafe { t.as_ref() }.is_some_and(|t| t.depth() > 0) {
            return std::task::Poll::Ready(());
        }
        let mut st = lock(&p.state);
        if !st.requested {
            if self.info.quiescent.swap(false, Ordering::Relaxed) {
                st.quiescent -= 1;
            }
            self.parked = false;
            return std::task::Poll::Ready(());
        }
        if !self.info.quiescent.swap(true, Ordering::Relaxed) {
            st.quiescent += 1;
            p.changed.notify_all();
        }
        self.parked = true;
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }
}

impl Drop for TaskUpdatePoint<'_> {
    fn drop(&mut self) {
        // A point dropped while parked (its task cancelled) no longer counts as parked.
        if self.parked {
            let p = &registry().parking;
            let mut st = lock(&p.state);
            if self.info.quiescent.swap(false, Ordering::Relaxed) {
                st.quiescent -= 1;
            }
            p.changed.notify_all();
        }
    }
}
