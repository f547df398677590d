//! The runtime compiled out: what `--cfg dsu_off` builds instead of everything else.
//!
//! `RUSTFLAGS="--cfg dsu_off" cargo build` turns the same, unmodified source into a program with
//! no dsu on its request path, to measure what dsu costs (BENCHMARKS.md, issue 5 item 2) and to
//! ship a build that needs no live updates. The macros emit both expansions, and the compiler
//! keeps the one this cfg selects (a proc macro cannot see the cfg of the crate it expands in):
//!
//! - a component's handle is an `Arc<RwLock<T>>`, and a call takes the lock a program would
//!   otherwise hold (a read lock for `&self`, a write lock for `&mut self`) and calls the method
//!   directly: no gate, table, thread tracking, panic catching or descriptors. A panic in a
//!   method reaches the caller as with dsu, and the component stays usable: the lock's poison
//!   is ignored, as the gate has none;
//! - a `#[dsu::global]` is a plain static (its initialiser must then be a constant expression,
//!   as for any static; with dsu it runs on first use);
//! - `#[dsu::state]` emits the type only; `#[dsu::protocol]` markers and
//!   `dsu::update_point!()` do nothing;
//! - the runtime starts without a control socket: **updates are impossible in this build**
//!   (there is nothing to apply them to, and a patch cannot be built with `dsu_off`).

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// A `#[dsu::component]` type (implemented by the macro).
pub trait Component: Send + Sync + Sized + 'static {
    /// The generated type whose methods take the lock and call the method.
    type Proxy: Proxy<Self>;
    /// `#[dsu::component(id = "...")]`, if given.
    #[doc(hidden)]
    const EXPLICIT_ID: Option<&'static str>;
    /// The type's full path, crate included.
    #[doc(hidden)]
    const PATH: &'static str;
}

/// The generated proxy of a component (what a [`Handle`] dereferences to).
pub trait Proxy<T>: Send + Sync + Sized {
    /// The lock around the state: std's `RwLock`, or tokio's for a component with `async fn`
    /// methods (a std guard cannot be held across an `.await` by a `Send` future).
    #[doc(hidden)]
    type Lock: Lock<T>;
    #[doc(hidden)]
    fn from_shared(state: Arc<Self::Lock>) -> Self;
    #[doc(hidden)]
    fn shared(&self) -> &Arc<Self::Lock>;
}

/// What a `dsu_off` proxy's lock offers besides locking.
#[doc(hidden)]
pub trait Lock<T>: Send + Sync + Sized {
    fn new(value: T) -> Self;
    fn is_poisoned(&self) -> bool;
    fn clear_poison(&self);
}

impl<T: Send + Sync> Lock<T> for RwLock<T> {
    fn new(value: T) -> Self {
        RwLock::new(value)
    }
    fn is_poisoned(&self) -> bool {
        RwLock::is_poisoned(self)
    }
    fn clear_poison(&self) {
        RwLock::clear_poison(self)
    }
}

/// tokio's lock does not poison: under `dsu_off`, a panic in an `async fn` component's
/// `&mut self` method leaves it usable (with dsu, it poisons it).
impl<T: Send + Sync> Lock<T> for tokio::sync::RwLock<T> {
    fn new(value: T) -> Self {
        tokio::sync::RwLock::new(value)
    }
    fn is_poisoned(&self) -> bool {
        false
    }
    fn clear_poison(&self) {}
}

/// A cloneable, `Send + Sync` handle to a component: an `Arc<RwLock<T>>` whose methods (through
/// `Deref` to the generated proxy) lock it and call the component's method.
pub struct Handle<T: Component> {
    proxy: T::Proxy,
    _t: PhantomData<fn() -> T>,
}

/// A `dsu_off` build cannot hand off: its handles are not serializable (the impls exist so
/// that the state types' derived serde code compiles the same with and without dsu).
impl<T: Component> serde::Serialize for Handle<T> {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "a dsu_off build cannot hand off its state",
        ))
    }
}

impl<'de, T: Component> serde::Deserialize<'de> for Handle<T> {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a dsu_off build cannot hand off its state",
        ))
    }
}

impl<T: Component> Handle<T> {
    /// The component's identity, as with dsu (the module path inside its crate and the name,
    /// or the explicit id).
    pub fn id(_this: &Self) -> &'static str {
        match T::EXPLICIT_ID {
            Some(id) => id,
            None => T::PATH.split_once("::").map_or(T::PATH, |(_, path)| path),
        }
    }

    /// Always 1: nothing is ever updated in this build.
    pub fn version(_this: &Self) -> u32 {
        1
    }

    /// Whether a `&mut self` call panicked and poisoned the lock.
    pub fn is_poisoned(this: &Self) -> bool {
        this.proxy.shared().is_poisoned()
    }

    /// Clears the poison (`RwLock::clear_poison`).
    pub fn clear_poison(this: &Self) {
        this.proxy.shared().clear_poison()
    }
}

impl<T: Component> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle {
            proxy: T::Proxy::from_shared(self.proxy.shared().clone()),
            _t: PhantomData,
        }
    }
}

impl<T: Component> std::ops::Deref for Handle<T> {
    type Target = T::Proxy;
    #[inline]
    fn deref(&self) -> &T::Proxy {
        &self.proxy
    }
}

impl<T: Component> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("id", &Handle::id(self))
            .finish()
    }
}

/// Wraps a component instance in its handle.
pub fn register<T: Component>(state: T) -> Handle<T> {
    Handle {
        proxy: T::Proxy::from_shared(Arc::new(Lock::new(state))),
        _t: PhantomData,
    }
}

/// A `#[dsu::global] static X: T = init;`: the value itself.
#[repr(transparent)]
pub struct Global<T>(T);

impl<T> Global<T> {
    #[doc(hidden)]
    pub const fn new(value: T) -> Self {
        Global(value)
    }
}

impl<T> std::ops::Deref for Global<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What registering a thread returns; without updates there is nothing to park for.
pub struct ThreadRegistration {
    _not_send: PhantomData<*const ()>,
}

/// A registered task; with `--cfg dsu_off` its update point is always ready.
pub struct TaskRegistration {
    _private: (),
}

/// See [`TaskRegistration::update_point`].
pub type TaskUpdatePoint<'a> = std::future::Ready<()>;

impl TaskRegistration {
    /// Ready at once: nothing to park for.
    pub fn update_point(&self) -> TaskUpdatePoint<'_> {
        std::future::ready(())
    }

    /// Awaits `fut`: nothing to park for.
    pub async fn idle<F: std::future::Future>(&self, fut: F) -> F::Output {
        fut.await
    }
}

/// Registers a long-lived task: nothing to do with `--cfg dsu_off`.
pub fn register_task(_name: impl Into<String>) -> TaskRegistration {
    TaskRegistration { _private: () }
}

/// Does nothing but return the registration (no update ever waits for a thread).
pub fn register_thread() -> ThreadRegistration {
    ThreadRegistration {
        _not_send: PhantomData,
    }
}

/// Configures and starts the runtime; with `dsu_off` the settings are accepted and ignored.
#[derive(Default)]
pub struct RuntimeBuilder {
    _private: (),
}

impl RuntimeBuilder {
    /// Ignored: no control socket is opened, so `cargo dsu apply/status` cannot reach this
    /// process.
    pub fn control_socket(self, _path: impl Into<PathBuf>) -> Self {
        self
    }

    /// Ignored.
    pub fn program(self, _name: impl Into<String>) -> Self {
        self
    }

    /// Ignored.
    pub fn version(self, _v: impl Into<String>) -> Self {
        self
    }

    /// Ignored.
    pub fn patch_dir(self, _dir: impl Into<PathBuf>) -> Self {
        self
    }

    /// Ignored: no update runs in this build, so none leaves files to recover.
    pub fn data_dir(self, _dir: impl Into<PathBuf>) -> Self {
        self
    }

    /// Ignored: there is no control socket.
    pub fn control_allow_uid(self, _uid: u32) -> Self {
        self
    }

    /// Ignored: no package can be applied.
    pub fn trust_key(self, _key: crate::package::signing::PublicKey) -> Self {
        self
    }

    /// Ignored: no package can be applied.
    pub fn trusted_keys_file(self, _path: impl Into<PathBuf>) -> Self {
        self
    }

    /// Starts the runtime: nothing to start but the once-per-process check.
    pub fn start(self) -> Result<Runtime, crate::error::Error> {
        static STARTED: AtomicBool = AtomicBool::new(false);
        // Relaxed: a once-flag with no data attached.
        if STARTED.swap(true, Ordering::Relaxed) {
            return Err(crate::error::Error::AlreadyStarted);
        }
        Ok(Runtime { _private: () })
    }
}

/// The started runtime, without a control socket.
pub struct Runtime {
    _private: (),
}

impl Runtime {
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Wraps a component instance in its handle (same as [`register`]).
    pub fn register<T: Component>(&self, state: T) -> Handle<T> {
        register(state)
    }

    /// Does nothing (see [`register_thread`]).
    /// Nothing to report: a `dsu_off` build is never started by a hand-off.
    pub fn ready(&self) {}

    /// Always `false` in a `dsu_off` build.
    pub fn handed_over(&self) -> bool {
        false
    }

    pub fn register_thread(&self) -> ThreadRegistration {
        register_thread()
    }

    /// Always `None`: no control socket is opened.
    pub fn socket(&self) -> Option<&Path> {
        None
    }
}

/// Not public API: what the macros' `dsu_off` expansions use.
pub mod private {
    use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    pub use crate::off::{Component, Global, Lock, Proxy};
    pub use serde;

    /// What a component's proxy holds (`L`: its lock, see `Proxy::Lock`).
    pub type Shared<L> = std::sync::Arc<L>;

    /// Read access for a `&self` method: the lock a program would otherwise take.
    #[inline(always)]
    /// A call on a poisoned component panics, as with dsu.
    pub fn read<T>(state: &RwLock<T>) -> RwLockReadGuard<'_, T> {
        state.read().unwrap_or_else(|_| poisoned())
    }

    /// Exclusive access for a `&mut self` method.
    #[inline(always)]
    pub fn write<T>(state: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
        state.write().unwrap_or_else(|_| poisoned())
    }

    #[cold]
    #[inline(never)]
    fn poisoned() -> ! {
        panic!(
            "dsu: component is poisoned: an earlier call of a `&mut self` method panicked and \
             may have left its state half-changed; the program may check the state and call \
             `Handle::clear_poison`"
        )
    }

    /// The lock of a component with `async fn` methods.
    pub type AsyncLock<T> = tokio::sync::RwLock<T>;

    /// Read access for an async `&self` method.
    #[inline(always)]
    pub async fn read_async<T>(state: &AsyncLock<T>) -> tokio::sync::RwLockReadGuard<'_, T> {
        state.read().await
    }

    /// Exclusive access for an async `&mut self` method.
    #[inline(always)]
    pub async fn write_async<T>(state: &AsyncLock<T>) -> tokio::sync::RwLockWriteGuard<'_, T> {
        state.write().await
    }

    /// Read access for a sync `&self` method of a component with `async fn` methods. tokio's
    /// blocking lock panics inside a runtime, so this tries, and yields the thread while a
    /// writer holds the lock.
    #[inline]
    pub fn read_sync<T>(state: &AsyncLock<T>) -> tokio::sync::RwLockReadGuard<'_, T> {
        loop {
            if let Ok(g) = state.try_read() {
                return g;
            }
            std::thread::yield_now();
        }
    }

    /// Exclusive access for a sync `&mut self` method of such a component (see [`read_sync`]).
    #[inline]
    pub fn write_sync<T>(state: &AsyncLock<T>) -> tokio::sync::RwLockWriteGuard<'_, T> {
        loop {
            if let Ok(g) = state.try_write() {
                return g;
            }
            std::thread::yield_now();
        }
    }

    /// `dsu::update_point!()`: nothing to park for.
    #[inline(always)]
    pub fn update_point() {}
}

/// A patch's root, which `cargo dsu` appends to a patch: a patch cannot be built without the
/// runtime.
#[macro_export]
#[doc(hidden)]
macro_rules! patch_root {
    () => {
        ::core::compile_error!(
            "a live update patch cannot be built with `--cfg dsu_off`: the runtime is compiled \
             out; build the base and its patches without it"
        );
    };
}
