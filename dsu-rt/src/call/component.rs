//! Components: instances (slots), their tables, handles and the call path.
//!
//! A component *type* (one id across versions) has a canonical list of table entries, keyed by
//! method name and signature fingerprint. Entries are only ever appended, so an index into the
//! list stays valid forever; each compiled version's proxy finds its methods through index
//! cells the runtime fills in (`desc::IndexCell`). When a version drops a method or changes its
//! signature, its old entry keeps its index and gets the old version's typed trap, so a stale
//! caller panics instead of calling a function of another type.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::gate::Gate;
use super::incoming;
use super::tasks::TaskCalls;
use super::thread::lock;
use crate::abi::desc::{ComponentDesc, ErasedFn, MethodDesc, StateLayout, TransferDesc};
use crate::abi::shared::Shared;

/// A `#[dsu::state]` type.
///
/// # Safety
/// `LAYOUT` must describe `Self` (the macro computes it).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a dsu state type",
    label = "component state must be marked `#[dsu::state]`",
    note = "add `#[dsu::state]` to the definition of `{Self}`"
)]
pub unsafe trait State: 'static {
    const LAYOUT: StateLayout;
}

/// A `#[dsu::component]` type.
///
/// # Safety
/// `DESC` must describe `Self` and its table entries must have the types the proxy expects
/// (the macro generates both from the same signatures).
pub unsafe trait Component: State + Send + Sync + Sized {
    /// The generated type whose methods call through the table.
    type Proxy: Proxy;
    const DESC: &'static ComponentDesc;
}

/// The generated proxy of a component (what a [`Handle`] dereferences to).
pub trait Proxy: Send + Sync + Sized {
    #[doc(hidden)]
    fn from_raw(raw: RawHandle) -> Self;
    #[doc(hidden)]
    fn raw(&self) -> &RawHandle;
}

/// A table: its length, then its entries.
pub(crate) struct Table {
    pub(crate) entries: Box<[ErasedFn]>,
    /// The version the table belongs to.
    pub(crate) desc: &'static ComponentDesc,
}

/// One canonical table entry.
pub(crate) struct Canonical {
    pub(crate) name: &'static str,
    pub(crate) signature: u64,
    pub(crate) trap: ErasedFn,
}

/// A component type: all instances of one id, across versions.
pub(crate) struct ComponentType {
    pub(crate) id: String,
    pub(crate) inner: Mutex<TypeInner>,
}

pub(crate) struct TypeInner {
    pub(crate) canonical: Vec<Canonical>,
    /// The running version's table (leaked: tables are never freed, callers may hold them).
    pub(crate) table: &'static Table,
    pub(crate) slots: Vec<Weak<Slot>>,
    /// How many versions this type has been through (1 = as first registered).
    pub(crate) version: u32,
    /// The transfers applied to this type, oldest first: an instance registered later by code
    /// of an older version (the base's accept loop, say) is carried through them.
    pub(crate) transfers: Vec<&'static TransferDesc>,
}

impl TypeInner {
    pub(crate) fn index_of(&self, name: &str, signature: u64) -> Option<usize> {
        self.canonical
            .iter()
            .position(|c| c.name == name && c.signature == signature)
    }

    /// Builds the table `desc` would run with, appending canonical entries for its new methods.
    /// Does not resolve cells or install anything.
    pub(crate) fn table_for(&mut self, desc: &'static ComponentDesc) -> &'static Table {
        for m in desc.methods {
            if self.index_of(m.name, m.signature).is_none() {
                self.canonical.push(Canonical {
                    name: m.name,
                    signature: m.signature,
                    trap: m.trap,
                });
            }
        }
        let entries = self
            .canonical
            .iter()
            .map(|c| {
                desc.methods
                    .iter()
                    .find(|m| m.name == c.name && m.signature == c.signature)
                    .map(|m| m.entry)
                    .unwrap_or(c.trap)
            })
            .collect();
        Box::leak(Box::new(Table { entries, desc }))
    }

    pub(crate) fn live_slots(&self) -> Vec<Arc<Slot>> {
        self.slots.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Resolves a version's index cells against a type's canonical entries. Returns the methods
/// that are not in the table the type will run (name, signature).
pub(crate) fn resolve_cells(inner: &TypeInner, desc: &ComponentDesc) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for m in desc.methods {
        match inner.index_of(m.name, m.signature) {
            Some(i) => m.cell.set(i),
            None => missing.push(m.name),
        }
    }
    missing
}

/// Bit of [`Slot::watch`]: a rate-bound policy is sampling the instance's call count.
pub(crate) const WATCH_COUNT: u8 = 1;
/// Bit of [`Slot::watch`]: the instance is poisoned (`Slot::poisoned` names the method).
pub(crate) const WATCH_POISON: u8 = 2;

/// One registered component instance.
pub struct Slot {
    pub(crate) gate: Gate,
    /// The running table. Swapped only while the update manager holds the gate.
    pub(crate) table: AtomicPtr<Table>,
    /// The boxed state, of the running version's type. Swapped like `table`.
    pub(crate) state: AtomicPtr<()>,
    pub(crate) ty: Arc<ComponentType>,
    /// Calls counted while a rate-bound policy samples the component.
    pub(crate) calls: AtomicU64,
    /// Set (to the method) when a `&mut self` call panicked: the state may be half-changed, so
    /// later calls panic too, as a poisoned `Mutex` or `RwLock` does, until the program clears
    /// it with [`Handle::clear_poison`].
    pub(crate) poisoned: AtomicPtr<MethodDesc>,
    /// What a call must look at before it runs, as bits (`WATCH_*`): zero on the fast
    /// path, so a call reads one byte instead of the poison and a policy's switch.
    pub(crate) watch: AtomicU8,
    /// The async calls in flight, by method (for the report of an update that waits for them).
    pub(crate) tasks: TaskCalls,
    /// When the instance was registered, in the order of all registrations (see
    /// [`drop_all_states`]).
    pub(crate) born: u64,
}

impl Slot {
    pub(crate) fn current_table(&self) -> &'static Table {
        // SAFETY: the pointer always comes from a leaked `Table`; Acquire pairs with the
        // Release store in `install` (readers that are not inside the gate, e.g. status).
        unsafe { &*self.table.load(Ordering::Acquire) }
    }

    /// The `&mut self` method whose panic poisoned the instance, if one did.
    pub(crate) fn poisoned_by(&self) -> Option<&'static str> {
        // Relaxed: a flag read outside the gate (calls read it inside, the update manager
        // while it holds the gate).
        let m = self.poisoned.load(Ordering::Relaxed);
        // SAFETY: method descriptors are never freed (libraries are never unloaded).
        unsafe { m.as_ref() }.map(|m| m.name)
    }

    /// Clears the poison.
    pub(crate) fn clear_poison(&self) {
        // Relaxed: calls that enter the gate afterwards are ordered by the gate.
        self.poisoned.store(std::ptr::null_mut(), Ordering::Relaxed);
        self.watch.fetch_and(!WATCH_POISON, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let table = self.current_table();
        let state = *self.state.get_mut();
        if state.is_null() {
            // Dropped already, by `drop_all_states`.
            return;
        }
        // SAFETY: the state was boxed by the version whose `drop_state` is in the table that
        // was installed together with it; nobody else holds the slot any more.
        unsafe { (table.desc.drop_state)(state) };
    }
}

/// A type-erased handle: what a proxy holds.
#[derive(Clone)]
pub struct RawHandle {
    pub(crate) slot: Arc<Slot>,
}

/// A cloneable, `Send + Sync` handle to a registered component. Methods called on it (through
/// `Deref` to the generated proxy) go through the component's gate and current table.
pub struct Handle<T: Component> {
    proxy: T::Proxy,
    _t: PhantomData<fn() -> T>,
}

/// A handle in a state streamed by a hand-off: the component's id and the instance's place in
/// registration order. The new process resolves it to the instance registered there, so the
/// component it points at must be registered before the state that holds the handle.
impl<T: Component> serde::Serialize for Handle<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let slot = &self.proxy.raw().slot;
        let instance = lock(&slot.ty.inner)
            .live_slots()
            .iter()
            .position(|x| Arc::ptr_eq(x, slot))
            .ok_or_else(|| {
                serde::ser::Error::custom("a handle to an instance no longer registered")
            })?;
        serde::Serialize::serialize(&(slot.ty.id.as_str(), instance), s)
    }
}

impl<'de, T: Component> serde::Deserialize<'de> for Handle<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (id, instance): (String, usize) = serde::Deserialize::deserialize(d)?;
        let ty = lock(types()).get(&id).cloned();
        let slot = ty.and_then(|ty| lock(&ty.inner).live_slots().get(instance).cloned());
        let slot = slot.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "a handle to component `{id}` (instance {instance}), which is not registered \
                 (yet): register it before the component whose state holds the handle"
            ))
        })?;
        Ok(Handle::from_raw(RawHandle { slot }))
    }
}

impl<T: Component> Handle<T> {
    pub(crate) fn from_raw(raw: RawHandle) -> Self {
        Handle {
            proxy: T::Proxy::from_raw(raw),
            _t: PhantomData,
        }
    }

    /// The component's identity (stable across versions).
    ///
    /// An associated function, not a method (`Handle::id(&h)`), so that it never shadows a
    /// component method called through the handle: the same convention as `Arc::strong_count`.
    pub fn id(this: &Self) -> &str {
        &this.proxy.raw().slot.ty.id
    }

    /// The component's version: 1 as registered by the base, +1 per update applied to it.
    pub fn version(this: &Self) -> u32 {
        lock(&this.proxy.raw().slot.ty.inner).version
    }

    /// Whether a `&mut self` call panicked and left the component poisoned: every call then
    /// panics, as calls on a poisoned `Mutex` would with `lock().unwrap()`.
    pub fn is_poisoned(this: &Self) -> bool {
        this.proxy.raw().slot.poisoned_by().is_some()
    }

    /// Clears the poison, once the program has checked or repaired the state (like
    /// `Mutex::clear_poison`).
    pub fn clear_poison(this: &Self) {
        this.proxy.raw().slot.clear_poison();
    }
}

impl<T: Component> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle::from_raw(self.proxy.raw().clone())
    }
}

impl<T: Component> std::ops::Deref for Handle<T> {
    type Target = T::Proxy;
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

/// Registers a component instance with the process's runtime and returns its handle.
///
/// Works from the host and from patched code alike (both reach the host's registry).
pub fn register<T: Component>(state: T) -> Handle<T> {
    // In a process started by a hand-off, the state streamed by the old process replaces the
    // value `main` built (which it built the same way the first time).
    let ptr = match incoming::take_component(&T::DESC.id(), T::DESC.state) {
        Some(streamed) => {
            drop(state);
            streamed
        }
        None => Box::into_raw(Box::new(state)) as *mut (),
    };
    // SAFETY: `ptr` is a boxed `T`, and `T::DESC` describes `T`.
    let raw = unsafe { register_raw(T::DESC, ptr) };
    Handle::from_raw(raw)
}

/// The component type of `desc`'s id, created with `desc` as its first version if new.
pub(crate) fn type_for(desc: &'static ComponentDesc) -> Arc<ComponentType> {
    let id = desc.id();
    let mut types = lock(types());
    types
        .entry(id.clone())
        .or_insert_with(|| {
            let mut inner = TypeInner {
                canonical: Vec::new(),
                table: Box::leak(Box::new(Table {
                    entries: Box::new([]),
                    desc,
                })),
                slots: Vec::new(),
                version: 1,
                transfers: Vec::new(),
            };
            inner.table = inner.table_for(desc);
            let missing = resolve_cells(&inner, desc);
            debug_assert!(missing.is_empty(), "a first version resolves");
            Arc::new(ComponentType {
                id,
                inner: Mutex::new(inner),
            })
        })
        .clone()
}

/// # Safety
/// `state` must be a `Box` of the type `desc` describes.
pub(crate) unsafe fn register_raw(desc: &'static ComponentDesc, state: *mut ()) -> RawHandle {
    let ty = type_for(desc);
    let mut inner = lock(&ty.inner);
    let running = inner.table.desc;
    let mut state = state;
    let mut fp = desc.state.fingerprint();
    if fp != running.state.fingerprint() {
        // Code of an older version registers an instance: carry its state through the
        // transfers applied since, oldest first.
        let start = inner
            .transfers
            .iter()
            .position(|t| t.old.fingerprint() == fp);
        let Some(start) = start else {
            drop(inner);
            // SAFETY: caller's contract: `state` is a box of `desc`'s type.
            unsafe { (desc.drop_state)(state) };
            panic!(
                "dsu: cannot register component `{}`: its state type is of a version this \
                 process never ran, and no update transfers from it",
                ty.id
            );
        };
        let chain = inner.transfers[start..].to_vec();
        for t in chain {
            if t.old.fingerprint() != fp {
                continue;
            }
            // SAFETY: `state` is a live box of `t.old`'s layout (fingerprints match).
            match unsafe { (t.transfer)(state) } {
                Ok(new) => {
                    // SAFETY: the transfer succeeded; the old box is released exactly once.
                    unsafe { (t.release_old)(state) };
                    state = new;
                    fp = t.new.fingerprint();
                }
                Err(f) => {
                    drop(inner);
                    // SAFETY: `state` is still the live old box.
                    unsafe { (t.release_old)(state) };
                    panic!(
                        "dsu: cannot register component `{}`: transferring its state to the \
                         running version failed: {f}",
                        ty.id
                    );
                }
            }
        }
        debug_assert_eq!(fp, running.state.fingerprint());
    }
    // Code of an older version registers into the running version: its proxy's cells find
    // their methods by name and signature; a method the running version dropped resolves to
    // the trap left at its index.
    if !std::ptr::eq(desc, running) {
        resolve_cells(&inner, desc);
    }
    let slot = Arc::new(Slot {
        gate: Gate::new(),
        table: AtomicPtr::new(inner.table as *const Table as *mut Table),
        state: AtomicPtr::new(state),
        ty: ty.clone(),
        calls: AtomicU64::new(0),
        poisoned: AtomicPtr::new(std::ptr::null_mut()),
        watch: AtomicU8::new(0),
        tasks: TaskCalls::default(),
        // Relaxed: a ticket; only its order matters.
        born: BORN.fetch_add(1, Ordering::Relaxed),
    });
    inner.slots.retain(|w| w.strong_count() > 0);
    inner.slots.push(Arc::downgrade(&slot));
    RawHandle { slot }
}

/// Every live instance of every component type.
pub(crate) fn all_live_slots() -> Vec<Arc<Slot>> {
    types_snapshot()
        .iter()
        .flat_map(|t| lock(&t.inner).live_slots())
        .collect()
}

/// Registrations so far (see [`Slot::born`]).
static BORN: AtomicU64 = AtomicU64::new(0);

/// Drops the state of every live instance, the last registered first (an instance built with
/// handles to earlier ones may use them in its `Drop`), each with its gate taken for good: a
/// call that comes after waits until the process exits. For a process that is about to exit
/// (replaced by a hand-off), so that its components' `Drop` runs (journals flush, files
/// close). The instances in `held` are held at their gates by the caller already (the
/// hand-off's hold, never released); the others' calls must drain before `within` is over, or
/// they are left as they are. Returns how many were dropped and how many were left.
pub(crate) fn drop_all_states(held: &[Arc<Slot>], within: std::time::Duration) -> (usize, usize) {
    let mut slots = all_live_slots();
    slots.sort_by_key(|s| std::cmp::Reverse(s.born));
    let deadline = std::time::Instant::now() + within;
    let (mut dropped, mut left) = (0, 0);
    for s in slots {
        if held.iter().any(|h| Arc::ptr_eq(h, &s)) {
            // SAFETY: held by the caller, for good.
            if unsafe { drop_held(&s) } {
                dropped += 1;
            }
            continue;
        }
        s.gate.set_pending();
        let mut taken = s.gate.try_lock_for_update();
        while !taken && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
            taken = s.gate.try_lock_for_update();
        }
        if !taken {
            left += 1;
            continue;
        }
        // SAFETY: taken above, never released.
        if unsafe { drop_held(&s) } {
            dropped += 1;
        }
    }
    (dropped, left)
}

/// Drops the state of `s`, leaving a null that keeps `Slot::drop` from dropping it again.
/// Returns whether there was one.
///
/// # Safety
/// The caller holds `s`'s gate exclusively and never releases it.
unsafe fn drop_held(s: &Slot) -> bool {
    // Relaxed: the gate is held; the state is swapped only under it.
    let state = s.state.swap(std::ptr::null_mut(), Ordering::Relaxed);
    if state.is_null() {
        return false;
    }
    let table = s.current_table();
    // SAFETY: the state belongs to the installed table's version; nothing else can reach it
    // (caller's contract).
    unsafe { (table.desc.drop_state)(state) };
    true
}

/// Drops a boxed state of type `T` (the `drop_state` of every descriptor).
///
/// # Safety
/// `p` must be a `Box<T>` turned into a raw pointer, not used afterwards.
pub unsafe fn drop_state<T>(p: *mut ()) {
    // SAFETY: caller's contract.
    drop(unsafe { Box::from_raw(p as *mut T) });
}

/// The registered component type `id`.
pub(crate) fn find_type(id: &str) -> Option<Arc<ComponentType>> {
    lock(types()).get(id).cloned()
}

/// Ids of all registered component types, for status reports.
pub(crate) fn types_snapshot() -> Vec<Arc<ComponentType>> {
    let types = lock(types());
    let mut v: Vec<_> = types.values().cloned().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

pub(crate) type TypeMap = HashMap<String, Arc<ComponentType>>;

/// Every component type, by id (the host's, also in a patch).
static TYPES: Shared<Mutex<TypeMap>> = Shared::new("components", || Mutex::new(HashMap::new()));

#[inline]
pub(crate) fn types() -> &'static Mutex<TypeMap> {
    TYPES.get()
}
