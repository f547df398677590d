//! Fuzzes the live update package reader, `dsu::Package::from_bytes`.
//!
//! A package arrives from a file the operator names, so every byte of it is untrusted. For any
//! input the reader must return (no panic, no hang, no allocation beyond the input's size);
//! and a package it accepts must survive a round trip: `to_bytes` then `from_bytes` gives the
//! same manifest and library, and serialising that again gives the same bytes.

#![no_main]

use dsu::Package;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let package = match Package::from_bytes(data) {
        Ok(package) => package,
        Err(error) => {
            // The message is what the operator sees; formatting it must not panic either.
            let _ = error.to_string();
            return;
        }
    };
    let bytes = package.to_bytes();
    let again = Package::from_bytes(&bytes).unwrap_or_else(|error| {
        panic!("a package that parsed does not parse after `to_bytes`: {error}")
    });
    assert_eq!(
        again.manifest, package.manifest,
        "the manifest changed in a `to_bytes` / `from_bytes` round trip"
    );
    assert_eq!(
        again.library, package.library,
        "the library changed in a `to_bytes` / `from_bytes` round trip"
    );
    assert_eq!(
        again.to_bytes(),
        bytes,
        "serialising a package is not stable: the second `to_bytes` differs from the first"
    );
});
