//! The patch root: what a patch exports, and what the loader reads before any of its code runs.
//!
//! A patch exports one abi_stable root module ([`PatchRoot`]). Its layout is checked by
//! abi_stable before any of the patch's code runs; then the toolchain strings it carries
//! (compiled into the patch's copy of this crate, not taken from the package's manifest) are
//! compared with the host's (`update/load.rs`); only then does the host call `adopt` and read
//! the descriptors, which are Rust-layout structs and need the same compiler on both sides.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RStr;
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use super::artifact::{COMPONENTS, GLOBALS, GLOBAL_TRANSFERS, STATES, TRANSFERS};
use super::build;
use super::desc::{ComponentDesc, GlobalDesc, GlobalTransferDesc, StateLayout, TransferDesc};

pub use super::build::PATCH_FORMAT;

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
    /// Whether the patch links tokio, tracing and log from the shared library (dsu-shared).
    pub shared_dependencies: bool,
    /// The builds of tokio, tracing-core and log it was compiled against
    /// ([`build::dependency_builds`]).
    pub dependency_builds: RStr<'static>,
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
    // Keeps the facts section in every patch (the linker drops sections nothing refers to).
    std::hint::black_box(&super::facts::FACTS);
    PatchRoot {
        format: PATCH_FORMAT,
        dsu_rt: RStr::from_str(build::DSU_RT),
        rustc: RStr::from_str(build::RUSTC),
        target: RStr::from_str(build::TARGET),
        debug_assertions: build::DEBUG_ASSERTIONS,
        shared_dependencies: build::SHARED_DEPENDENCIES,
        dependency_builds: RStr::from_str(Box::leak(build::dependency_builds().into_boxed_str())),
        adopt,
        descriptors,
    }
    .leak_into_prefix()
}

/// The descriptors of the artifact this copy of the runtime is linked into.
pub(crate) fn this_artifact() -> PatchDescriptors {
    PatchDescriptors {
        components: &COMPONENTS,
        states: &STATES,
        globals: &GLOBALS,
        transfers: &TRANSFERS,
        global_transfers: &GLOBAL_TRANSFERS,
    }
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
