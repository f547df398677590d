//! Validate: before any of a package's code is loaded, its manifest is checked against this
//! process: the toolchain and runtime it was built with, the program it is for, and the base
//! (the running components' code) it was built against.

use crate::abi::build;
use crate::call::component;
use crate::call::thread::lock;
use crate::package::Manifest;

/// The package must be built by this process's rustc, for its target, against its dsu-rt, with
/// its debug assertions (a crate may change its types' layout with them).
pub(crate) fn check_toolchain(man: &Manifest) -> Result<(), String> {
    let host = [
        ("rustc", man.rustc.as_str(), build::RUSTC),
        ("target", man.target.as_str(), build::TARGET),
        ("dsu-rt", man.dsu_rt.as_str(), build::DSU_RT),
    ];
    for (what, pkgv, hostv) in host {
        if pkgv != hostv {
            return Err(format!(
                "the package was built with {what} `{pkgv}`, this process with `{hostv}`; \
                 rebuild the patch with the base's toolchain and Cargo.lock"
            ));
        }
    }
    if man.debug_assertions != build::DEBUG_ASSERTIONS {
        return Err(format!(
            "the package was built with debug assertions {}, this process {}; build the \
             patch with the base's profile (--release or not)",
            on_off(man.debug_assertions),
            on_off(build::DEBUG_ASSERTIONS)
        ));
    }
    Ok(())
}

/// A package for another program is refused (either name may be unset).
pub(crate) fn check_program(program: &str, man: &Manifest) -> Result<(), String> {
    if !program.is_empty() && !man.program.is_empty() && program != man.program {
        return Err(format!(
            "the package is for program `{}`, this process is `{program}`",
            man.program
        ));
    }
    Ok(())
}

/// The base the package was built against must be what runs.
pub(crate) fn check_base(man: &Manifest) -> Result<(), String> {
    for b in &man.base {
        if let Some(ty) = component::find_type(&b.id) {
            let code = lock(&ty.inner).table.desc.code;
            if code != b.code {
                return Err(format!(
                    "the package was built against another version of component `{}` than the \
                     one running (code {:016x}, running {:016x}); build it from the running \
                     version's source",
                    b.id, b.code, code
                ));
            }
        }
    }
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}
