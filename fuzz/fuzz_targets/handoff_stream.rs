//! Fuzzes the hand-off channel as the new process reads it (`handoff::receive`): pre-copied
//! batches into the lazy maps' mirrors, the pause's stream, its format and descriptor names,
//! then every streamed state of a component this binary has, read as `register` reads it
//! (`dsu::__fuzz::read_channel`, which leaves nothing behind between inputs).
//!
//! For any input it returns (no panic, no hang, no allocation sized from a length in the input
//! past libFuzzer's `-malloc_limit_mb`): a malformed hand-off is an error the new process
//! reports to the old one, which then serves on; and reading the same input again gives the
//! same result (nothing of one input stays behind). The seeds (`write_seeds`) are real
//! channels: the states of registered components, with and without pre-copied batches.

#![no_main]

#[path = "handoff_state.rs"]
#[allow(dead_code)]
mod handoff_state;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = dsu::__fuzz::read_channel(data);
    if let Err(reason) = &first {
        // The reason goes to the old process's report.
        assert!(!reason.is_empty(), "a refusal without a reason");
    }
    // Nothing of one input stays behind for the next (mirrors, the pre-copy flag): the same
    // input reads the same way again.
    assert_eq!(
        dsu::__fuzz::read_channel(data),
        first,
        "a second read of the same channel differs"
    );
});
