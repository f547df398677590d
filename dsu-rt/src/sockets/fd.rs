//! Descriptor helpers the other files share.

use std::io::{self};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

pub(super) fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed descriptor hand-off: {what}"),
    )
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor; the result is owned here.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

pub(super) fn is_listening_tcp(fd: RawFd) -> bool {
    let opt = |name| sockopt::<libc::c_int>(fd, libc::SOL_SOCKET, name);
    opt(libc::SO_ACCEPTCONN) == Some(1)
        && opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && matches!(opt(libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6))
}

/// A socket option of type `T` (an integer, or a plain C struct such as `ucred`), or `None` if
/// it cannot be read or is not of that size.
pub(crate) fn sockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<T> {
    let mut v = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of `size_of::<T>()` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut len) };
    // SAFETY: the kernel wrote the whole value (its length is checked); the callers' `T`s are
    // integers and C structs, valid for any bytes.
    (rc == 0 && len as usize == std::mem::size_of::<T>()).then(|| unsafe { v.assume_init() })
}
