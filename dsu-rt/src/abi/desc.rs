//! Descriptors: what the macros generate about each component, state type, global and
//! transfer, and what the loader reads from a patch.
//!
//! Descriptors are plain Rust structs shared between the host and a patch. That is sound only
//! because both are built by the same rustc, for the same target, against the same version of
//! this crate: the loader checks all three before it reads a single descriptor.

use std::any::Any;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::fingerprint;

/// A panic payload carried across the host/patch boundary.
pub type Payload = Box<dyn Any + Send + 'static>;

/// What a table entry returns: the method's value, or the payload of a panic caught on the
/// callee's side of the boundary (each side has its own copy of std, and a panic must not
/// unwind through the other copy's frames; see `component::finish`).
pub type CallResult<T> = Result<T, Payload>;

/// A type-erased function pointer, cast back to its real type by generated code that knows it.
#[derive(Clone, Copy)]
pub struct ErasedFn(unsafe fn());

impl ErasedFn {
    /// Wraps an erased function pointer.
    ///
    /// # Safety
    /// Whoever calls the pointer must transmute it back to the exact type it had.
    pub const unsafe fn new(f: unsafe fn()) -> Self {
        ErasedFn(f)
    }

    /// The erased pointer.
    pub fn get(self) -> unsafe fn() {
        self.0
    }
}

impl std::fmt::Debug for ErasedFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ErasedFn({:p})", self.0 as *const ())
    }
}

/// How a method borrows its component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// `&self`: runs concurrently with other `&self` calls.
    Shared,
    /// `&mut self`: exclusive access.
    Exclusive,
}

/// A method's part in a `#[dsu::protocol]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolRole {
    /// Not part of a protocol.
    None,
    /// Starts an instance of the named protocol when it returns.
    Begin(&'static str),
    /// Ends an instance of the named protocol when it returns.
    End(&'static str),
}

/// Where a version's proxy finds a method in the component's current table.
///
/// Each compiled version has its own cells; the runtime fills them when the version is
/// registered or loaded, so that tables can grow and be reordered across versions without a
/// caller ever indexing the wrong entry.
pub struct IndexCell(AtomicUsize);

impl IndexCell {
    const UNRESOLVED: usize = usize::MAX;

    /// An unresolved cell.
    #[allow(clippy::new_without_default)] // used in `static` initialisers: must be const
    pub const fn new() -> Self {
        IndexCell(AtomicUsize::new(Self::UNRESOLVED))
    }

    /// The resolved index, or `usize::MAX`.
    #[inline]
    pub fn get(&self) -> usize {
        // Relaxed: a cell is written once, before the handle or patch that reads it is
        // published to other threads (handle creation / patch load both synchronise).
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, index: usize) {
        // Relaxed: see `get`.
        self.0.store(index, Ordering::Relaxed);
    }
}

/// One method of a component.
pub struct MethodDesc {
    pub name: &'static str,
    /// Fingerprint of the signature: tokens of the argument and return types plus their sizes.
    pub signature: u64,
    pub receiver: Receiver,
    /// The entry point: `unsafe fn(*mut (), args...) -> CallResult<Ret>`.
    pub entry: ErasedFn,
    /// Same type as `entry`; installed in place of this method when a later version removes it
    /// or changes its signature, so a stale caller gets a panic instead of a mistyped call.
    pub trap: ErasedFn,
    pub cell: &'static IndexCell,
    pub protocol: ProtocolRole,
    pub protocol_state: Option<&'static ProtocolRef>,
}

/// A version's reference to a protocol, resolved lazily to the runtime's shared state (its
/// behaviour is in `call/protocol.rs`).
pub struct ProtocolRef {
    pub(crate) name: &'static str,
    /// The `ProtocolState` it resolved to.
    pub(crate) resolved: AtomicPtr<()>,
}

impl ProtocolRef {
    pub const fn new(name: &'static str) -> Self {
        ProtocolRef {
            name,
            resolved: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

/// What kind of type a state type is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    Struct,
    Enum,
}

/// One field of a state type.
#[derive(Debug)]
pub struct FieldLayout {
    /// The field name (`0`, `1`, ... for tuple structs; `Variant.field` for enums).
    pub name: &'static str,
    /// Byte offset, or `usize::MAX` where Rust does not expose it (enum fields).
    pub offset: usize,
    pub size: usize,
    /// Hash of the field type's tokens.
    pub ty: u64,
}

/// The layout fingerprint of a `#[dsu::state]` type.
#[derive(Debug)]
pub struct StateLayout {
    pub name: &'static str,
    pub module_path: &'static str,
    /// Set on the old definitions a patch carries (`old::Entry`): this layout describes the
    /// base's type of the same id, not a new one.
    pub is_old: bool,
    pub kind: StateKind,
    pub size: usize,
    pub align: usize,
    pub fields: &'static [FieldLayout],
    /// Hash of the whole definition's tokens.
    pub definition: u64,
    /// Writes a value of this type (`*const Self`) in the hand-off stream's format; `None` for
    /// a `#[dsu::state(rebuild)]` type, which a hand-off does not carry.
    pub save: Option<SaveFn>,
    /// Reads a value written by `save` into a new box (`*mut Self`).
    pub load: Option<LoadFn>,
}

/// Serializes a value behind a type-erased pointer (see [`StateLayout::save`]).
pub type SaveFn = unsafe fn(*const ()) -> Result<Vec<u8>, String>;
/// Deserializes a boxed value (see [`StateLayout::load`]).
pub type LoadFn = fn(&[u8]) -> Result<*mut (), String>;

impl StateLayout {
    /// The identity of the type across versions: its module path inside its crate and its name.
    /// The crate name is left out, so renaming the package does not change identity; the `old`
    /// module a patch carries is left out of the old copies' identity.
    pub fn id(&self) -> String {
        let mut path = strip_crate(self.module_path);
        if self.is_old {
            path = path
                .strip_suffix("old")
                .map(|p| p.trim_end_matches("::"))
                .unwrap_or(path);
        }
        join_id(path, self.name)
    }

    /// The fingerprint compared at load time: size, align, kind, and every field's name,
    /// offset, size and type tokens.
    pub fn fingerprint(&self) -> u64 {
        let mut h = fingerprint::str(self.name);
        h = fingerprint::mix_all(
            h,
            &[
                self.size as u64,
                self.align as u64,
                self.kind as u64,
                self.fields.len() as u64,
            ],
        );
        for f in self.fields {
            h = fingerprint::bytes(h, f.name.as_bytes());
            h = fingerprint::mix_all(h, &[f.offset as u64, f.size as u64, f.ty]);
        }
        h
    }

    /// The fingerprint of the serialized form: name, kind, and every field's name and type
    /// tokens, without sizes or offsets, which another toolchain may lay out differently. A
    /// hand-off compares it to decide whether the new version reads the old form directly.
    pub fn schema(&self) -> u64 {
        let mut h = fingerprint::str(self.name);
        h = fingerprint::mix_all(h, &[self.kind as u64, self.fields.len() as u64]);
        for f in self.fields {
            h = fingerprint::bytes(h, f.name.as_bytes());
            h = fingerprint::mix_all(h, &[f.ty]);
        }
        h
    }
}

/// The crate-independent part of a module path.
pub(crate) fn strip_crate(module_path: &str) -> &str {
    match module_path.find("::") {
        Some(i) => &module_path[i + 2..],
        None => "",
    }
}

pub(crate) fn join_id(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}::{name}")
    }
}

/// A `#[dsu::component]`: its state type, methods and code version.
pub struct ComponentDesc {
    pub name: &'static str,
    /// `#[dsu::component(id = "...")]`, for components that move between modules.
    pub explicit_id: Option<&'static str>,
    pub module_path: &'static str,
    pub state: &'static StateLayout,
    pub methods: &'static [MethodDesc],
    /// Hash of the impl block's tokens: differs whenever any method body changes.
    pub code: u64,
    /// Drops a boxed state of this version's type.
    pub drop_state: unsafe fn(*mut ()),
    /// Index in `methods` of the `prepare_to_die` hook, if the component has one.
    pub prepare_to_die: Option<usize>,
    /// Index in `methods` of the `migrate` hook (`fn(&mut self) -> Result<(), String>`).
    pub migrate: Option<usize>,
    /// Index in `methods` of the `health_check` hook (`fn(&self) -> Result<(), String>`),
    /// run on a new version before its update commits.
    pub health_check: Option<usize>,
}

impl ComponentDesc {
    /// Identity across versions (see [`StateLayout::id`]).
    pub fn id(&self) -> String {
        match self.explicit_id {
            Some(id) => id.to_string(),
            None => join_id(strip_crate(self.module_path), self.name),
        }
    }
}

/// Why a state transfer failed.
#[derive(Debug, Clone)]
pub enum TransferFailure {
    /// The transfer returned an error.
    Error(String),
    /// The transfer panicked.
    Panic(String),
}

impl std::fmt::Display for TransferFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferFailure::Error(e) => write!(f, "returned an error: {e}"),
            TransferFailure::Panic(p) => write!(f, "panicked: {p}"),
        }
    }
}

/// A state transfer a patch provides, from the base's type (`old`) to the patch's (`new`).
pub struct TransferDesc {
    pub old: &'static StateLayout,
    pub new: &'static StateLayout,
    /// Reads the old state (`*const Old`) and returns a new boxed state (`*mut New`). On error or
    /// panic the old state is untouched, so the update can be rolled back.
    pub transfer: unsafe fn(*const ()) -> Result<*mut (), TransferFailure>,
    /// Releases the old boxed state after a successful transfer.
    pub release_old: unsafe fn(*mut ()),
    /// Frees a new boxed state that is not installed after all (a later step of the same update
    /// failed). A generated transfer's leaves the fields it moved alone: the old state, which
    /// runs on, still owns them.
    pub drop_new: unsafe fn(*mut ()),
    /// `true` when `cargo dsu` generated it, `false` for a `#[dsu::transfer]`.
    pub generated: bool,
    /// A new state with [`LazyMap`](crate::LazyMap)s taken over from the old one: makes them
    /// the new state's when the update commits, while the components are still held.
    pub settle: Option<unsafe fn(*mut ())>,
    /// Converts up to that many entries of the new state's lazy maps (the background pass, one
    /// batch with the component held); returns how many are left.
    pub convert_some: Option<unsafe fn(*mut (), usize) -> usize>,
}

/// A `#[dsu::global]`.
pub struct GlobalDesc {
    pub name: &'static str,
    pub module_path: &'static str,
    /// Type tokens hash, size and align.
    pub fingerprint: u64,
    /// Type tokens hash alone: the serialized form's fingerprint (see [`StateLayout::schema`]).
    pub schema: u64,
    /// Dereferences the global, so that its value is resolved (taken from a hand-off or
    /// initialised).
    pub touch: fn(),
    /// Serializes the value for a hand-off; `None` for `#[dsu::global(rebuild)]`.
    pub save: Option<SaveFn>,
    /// Deserializes a boxed value written by `save`.
    pub load: Option<LoadFn>,
}

impl GlobalDesc {
    /// Identity across versions (see [`StateLayout::id`]).
    pub fn id(&self) -> String {
        join_id(strip_crate(self.module_path), self.name)
    }
}

/// A patch's transfer of a `#[dsu::global]` whose type changed: the running value is converted
/// while every user is passive, and the registry's entry replaced. The old value is never freed
/// (code that cached a pointer to it stays memory-safe).
pub struct GlobalTransferDesc {
    pub name: &'static str,
    pub module_path: &'static str,
    pub old_fingerprint: u64,
    pub new_fingerprint: u64,
    /// Reads the old value (`*const Old`) and returns a new boxed value (`*mut New`).
    pub transfer: unsafe fn(*const ()) -> Result<*mut (), TransferFailure>,
    /// Frees a new boxed value that is not installed after all (see [`TransferDesc::drop_new`]).
    pub drop_new: unsafe fn(*mut ()),
    /// The old type's tokens hash: the serialized form a hand-off streams (see
    /// [`GlobalDesc::schema`]).
    pub old_schema: u64,
    /// Reads the old type's serialized form (a hand-off reads it, then transfers).
    pub load_old: Option<LoadFn>,
}

impl GlobalTransferDesc {
    /// The global's identity (see [`GlobalDesc::id`]).
    pub fn id(&self) -> String {
        join_id(strip_crate(self.module_path), self.name)
    }
}

/// Extracts a readable message from a panic payload.
pub fn payload_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_ignore_crate_and_old_module() {
        static FIELDS: [FieldLayout; 0] = [];
        let l = StateLayout {
            name: "Entry",
            module_path: "kv_v2::store::old",
            is_old: true,
            kind: StateKind::Struct,
            size: 1,
            align: 1,
            fields: &FIELDS,
            definition: 0,
            save: None,
            load: None,
        };
        assert_eq!(l.id(), "store::Entry");
        let l2 = StateLayout {
            module_path: "kv_v1::store",
            is_old: false,
            ..l
        };
        assert_eq!(l2.id(), "store::Entry");
        let root = StateLayout {
            module_path: "kv_v1",
            ..l2
        };
        assert_eq!(root.id(), "Entry");
    }
}
