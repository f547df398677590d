//! Loading a patch: the layout-checked root, adoption, descriptors.
//!
//! A patch exports one abi_stable root module ([`PatchRoot`]). Its layout is checked by
//! abi_stable before any of the patch's code runs; then the toolchain strings it carries
//! (compiled into the patch's copy of this crate, not taken from the package's manifest) are
//! compared with the host's; only then does the host call `adopt` and read the descriptors,
//! which are Rust-layout structs and need the same compiler on both sides.

pub mod transfer;

use std::path::Path;

use abi_stable::library::{lib_header_from_path, RootModule};
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RStr;
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::build;
use crate::context::HostContext;
use crate::desc::{ComponentDesc, GlobalDesc, GlobalTransferDesc, StateLayout, TransferDesc};

/// Version of the loader/patch protocol. Bumped whenever what crosses the boundary changes.
pub const PATCH_FORMAT: u32 = 1;

/// The loader-facing root of a patch.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PatchRootRef)))]
#[sabi(missing_field(panic))]
pub struct PatchRoot {
    pub format: u32,
    pub dsu_rt: RStr<'static>,
    pub rustc: RStr<'static>,
    pub target: RStr<'static>,
    pub debug_assertions: bool,
    /// Adopts the host's context (`*const HostContext`).
    pub adopt: unsafe extern "C" fn(*const ()),
    /// The patch's descriptors (`*const PatchDescriptors`, leaked).
    #[sabi(last_prefix_field)]
    pub descriptors: extern "C" fn() -> *const (),
}

impl RootModule for PatchRootRef {
    declare_root_module_statics! {PatchRootRef}
    const BASE_NAME: &'static str = "dsu_patch";
    const NAME: &'static str = "dsu_patch";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Everything a patch carries, read from its own copy of the runtime's distributed slices.
pub struct PatchDescriptors {
    pub components: &'static [&'static ComponentDesc],
    pub states: &'static [&'static StateLayout],
    pub globals: &'static [&'static GlobalDesc],
    pub transfers: &'static [&'static TransferDesc],
    pub global_transfers: &'static [&'static GlobalTransferDesc],
}

/// Builds a patch's root module (called inside the patch by `patch_root!`).
pub fn patch_root_module(adopt: unsafe extern "C" fn(*const ())) -> PatchRootRef {
    extern "C" fn descriptors() -> *const () {
        let d = Box::new(this_artifact());
        Box::into_raw(d) as *const ()
    }
    use abi_stable::prefix_type::PrefixTypeTrait;
    PatchRoot {
        format: PATCH_FORMAT,
        dsu_rt: RStr::from_str(build::DSU_RT),
        rustc: RStr::from_str(build::RUSTC),
        target: RStr::from_str(build::TARGET),
        debug_assertions: build::DEBUG_ASSERTIONS,
        adopt,
        descriptors,
    }
    .leak_into_prefix()
}

/// The descriptors of the artifact this copy of the runtime is linked into.
pub(crate) fn this_artifact() -> PatchDescriptors {
    use crate::__private::{COMPONENTS, GLOBALS, GLOBAL_TRANSFERS, STATES, TRANSFERS};
    PatchDescriptors {
        components: &COMPONENTS,
        states: &STATES,
        globals: &GLOBALS,
        transfers: &TRANSFERS,
        global_transfers: &GLOBAL_TRANSFERS,
    }
}

/// A loaded, adopted patch.
pub(crate) struct Loaded {
    pub(crate) descriptors: &'static PatchDescriptors,
}

/// Why a library was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a dsu patch, or built against an incompatible dsu-rt: {0}")]
    Root(String),
    #[error("the patch was built {what} `{patch}`, this process {what} `{host}`; rebuild the patch with the base's toolchain")]
    Mismatch {
        what: &'static str,
        patch: String,
        host: String,
    },
}

/// abi_stable's errors span several indented lines; a refusal reason is one.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens the library at `path` (a path no other library was loaded from), checks its root and
/// adopts the host's context. The library is never unloaded.
pub(crate) fn load(path: &Path) -> Result<Loaded, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| LoadError::Root(one_line(&e)))?;
    let root = header
        .init_root_module::<PatchRootRef>()
        .map_err(|e| LoadError::Root(one_line(&e)))?;
    let checks: [(&'static str, String, String); 5] = [
        (
            "with patch format",
            root.format().to_string(),
            PATCH_FORMAT.to_string(),
        ),
        (
            "against dsu-rt",
            root.dsu_rt().to_string(),
            build::DSU_RT.to_string(),
        ),
        (
            "with rustc",
            root.rustc().to_string(),
            build::RUSTC.to_string(),
        ),
        (
            "for target",
            root.target().to_string(),
            build::TARGET.to_string(),
        ),
        (
            "with debug assertions",
            root.debug_assertions().to_string(),
            build::DEBUG_ASSERTIONS.to_string(),
        ),
    ];
    for (what, patch, host) in checks {
        if patch != host {
            return Err(LoadError::Mismatch { what, patch, host });
        }
    }
    let host = Box::leak(Box::new(HostContext::of_this_process()));
    // SAFETY: the toolchain and runtime version match (checked above), so the patch's copy of
    // `HostContext` has this layout; the context lives for the rest of the process.
    unsafe { (root.adopt())(host as *const HostContext as *const ()) };
    let d = (root.descriptors())() as *const PatchDescriptors;
    // SAFETY: `descriptors` returns a leaked `PatchDescriptors` built by the same compiler and
    // runtime version (checked above).
    let descriptors = unsafe { &*d };
    Ok(Loaded { descriptors })
}

/// Defines a patch's root: its layout-checked abi_stable header, its `adopt` entry point and
/// its forwarding global allocator. cargo-dsu appends `::dsu::__private::patch_root!{}` to the
/// crate root of every patch it generates; a program never writes it.
#[doc(hidden)]
#[macro_export]
macro_rules! patch_root {
    () => {
        #[global_allocator]
        static __DSU_ALLOC: $crate::__private::ForwardAlloc = $crate::__private::ForwardAlloc::new();

        #[doc(hidden)]
        unsafe extern "C" fn __dsu_adopt(host: *const ()) {
            // SAFETY: the loader passes its `HostContext` after checking the toolchain.
            unsafe { $crate::__private::adopt(host, &__DSU_ALLOC) }
        }

        #[doc(hidden)]
        fn __dsu_root_module() -> $crate::__private::PatchRootRef {
            $crate::__private::patch_root_module(__dsu_adopt)
        }

        // What `#[abi_stable::export_root_module]` expands to, with paths through this crate so
        // that the patch needs no direct dependency on abi_stable.
        #[no_mangle]
        #[doc(hidden)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::abi_stable::library::LibHeader = {
            pub extern "C" fn _sabi_erased_module() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(__dsu_root_module)
            }
            type __SabiModule = <$crate::__private::PatchRootRef as $crate::__private::abi_stable::library::IntoRootModuleResult>::Module;
            // SAFETY: `_sabi_erased_module` returns the root module of type `__SabiModule`.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<__SabiModule>(
                    _sabi_erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_header_name_is_abi_stables() {
        // `patch_root!` spells the symbol out; it must be the one abi_stable looks up.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
