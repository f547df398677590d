//! The two futex calls the gate's waiters and wakers make.

use std::sync::atomic::AtomicU32;

/// Sleeps while `word` holds `seen` (returns at once if it does not; may return spuriously).
pub(super) fn futex_wait(word: &AtomicU32, seen: u32) {
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind the pointer, which lives as long as the
    // gate; a null timeout waits without a deadline.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes up to `n` threads sleeping on `word`.
pub(super) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}
