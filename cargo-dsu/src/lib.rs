//! cargo dsu: analyse two versions of a crate, generate and build the live update package,
//! apply it to a running process.
//!
//! The binary (`cargo-dsu`) is a thin front end; everything lives here so that tests and tools
//! can drive it as a library.

#![forbid(unsafe_code)]

pub mod analysis;
pub mod baseline;
pub mod cargo;
pub mod cli;
mod cmd;
pub mod exit;
pub mod patch;
pub mod report;
pub mod shell;
pub mod source;
pub mod transfer;
