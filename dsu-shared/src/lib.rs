//! The crates that keep process-wide state, as one dynamic library.
//!
//! tokio keeps its runtime context in thread-locals, tracing its dispatcher in a static, log
//! its logger in a static. A patch that linked its own copies would find no runtime (a
//! patched `tokio::spawn` panics), no subscriber and no logger. A program that depends on
//! `dsu` with the `shared` feature links this library, and so does every patch built for it:
//! the loader binds the patch to the copy the process already has (DESIGN.md §6).
//!
//! Use the crates under their own names (`tokio::spawn`, `tracing::info!`); this crate only
//! carries them.

pub use log;
pub use tokio;
pub use tracing;
pub use tracing_core;
