//! Verify: the package's signature against the process's trusted keys, first of all (nothing of
//! the package is used before it).

use crate::package::signing::PublicKey;
use crate::package::Package;

/// With no trusted key every package passes; with some, only packages one of them signed.
pub(crate) fn check_signature(trusted: &[PublicKey], pkg: &Package) -> Result<(), String> {
    if trusted.is_empty() {
        return Ok(());
    }
    let trusted_ids = || {
        trusted
            .iter()
            .map(|k| k.id())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match pkg.signer() {
        None => Err(format!(
            "the package is not signed, and this process applies only packages signed by a \
             trusted key ({}); sign it with `cargo dsu diff --sign KEY`",
            trusted_ids()
        )),
        Some(k) if !trusted.contains(k) => Err(format!(
            "the package is signed by key {}, which this process does not trust (trusted: \
             {}); sign it with a trusted key, or add the key to the process's trusted keys",
            k.id(),
            trusted_ids()
        )),
        Some(_) => Ok(()),
    }
}
