//! The transport that passes descriptors, each with its name, to another process over a Unix
//! socket (`SCM_RIGHTS`).
//!
//! The wire format, repeated until a frame with no descriptor:
//!
//! ```text
//! count      u32 LE      descriptors in this frame (at most MAX_FDS_PER_FRAME), SCM_RIGHTS
//!                        attached to this frame's first byte
//! names_len  u32 LE
//! names      UTF-8       the descriptors' names, each followed by '\n'
//! ```

use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::fd::invalid;

/// Most descriptors sent in one frame (the kernel accepts at most 253 per message).
pub const MAX_FDS_PER_FRAME: usize = 200;
/// Longest name list accepted in one frame.
const MAX_NAMES_LEN: usize = 1 << 20;

/// A descriptor and the name that finds it.
#[derive(Debug)]
pub struct NamedFd {
    pub name: String,
    pub fd: OwnedFd,
}

/// Sends `fds`, with their names, over `sock`; the peer receives them with [`recv_fds`].
/// Names must not contain a newline.
pub fn send_fds(sock: &UnixStream, fds: &[(&str, BorrowedFd<'_>)]) -> io::Result<()> {
    if let Some((name, _)) = fds.iter().find(|(n, _)| n.contains('\n')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor name {name:?} contains a newline"),
        ));
    }
    for chunk in fds.chunks(MAX_FDS_PER_FRAME) {
        send_frame(sock, chunk)?;
    }
    send_frame(sock, &[])
}

/// Receives the descriptors [`send_fds`] sent, in order. The descriptors are close-on-exec.
pub fn recv_fds(sock: &UnixStream) -> io::Result<Vec<NamedFd>> {
    let mut out = Vec::new();
    loop {
        let (fds, names) = recv_frame(sock)?;
        if fds.is_empty() {
            return Ok(out);
        }
        out.extend(
            names
                .into_iter()
                .zip(fds)
                .map(|(name, fd)| NamedFd { name, fd }),
        );
    }
}

fn send_frame(sock: &UnixStream, fds: &[(&str, BorrowedFd<'_>)]) -> io::Result<()> {
    let mut names = String::new();
    for (name, _) in fds {
        names.push_str(name);
        names.push('\n');
    }
    let mut frame = Vec::with_capacity(8 + names.len());
    frame.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(names.len() as u32).to_le_bytes());
    frame.extend_from_slice(names.as_bytes());
    let raw: Vec<RawFd> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE(payload) bytes, enough for one header and
        // `raw`, and is aligned for `cmsghdr`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                payload as usize,
            );
        }
    }
    // The descriptors travel with the first byte; the rest of the frame may need more writes.
    let sent = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    io::Write::write_all(&mut &*sock, &frame[sent..])
}

fn recv_frame(sock: &UnixStream) -> io::Result<(Vec<OwnedFd>, Vec<String>)> {
    let mut header = [0u8; 8];
    let payload = (MAX_FDS_PER_FRAME * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: header.as_mut_ptr() as *mut libc::c_void,
        iov_len: header.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let got = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Take ownership of whatever arrived first, so that an error below closes them.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control buffer; the CMSG macros walk it within
    // `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if got == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the sending process closed the descriptor channel",
        ));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(invalid("more descriptors arrived than a frame may carry"));
    }
    (&*sock).read_exact(&mut header[got..])?;
    let count = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let names_len = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
    if count != fds.len() {
        return Err(invalid(&format!(
            "the frame announces {count} descriptors, {} arrived",
            fds.len()
        )));
    }
    if names_len > MAX_NAMES_LEN {
        return Err(invalid(&format!("a name list of {names_len} bytes")));
    }
    let mut names = vec![0u8; names_len];
    (&*sock).read_exact(&mut names)?;
    let names = String::from_utf8(names).map_err(|_| invalid("names that are not UTF-8"))?;
    let names: Vec<String> = names.split_terminator('\n').map(str::to_string).collect();
    if names.len() != count {
        return Err(invalid(&format!(
            "{} names for {count} descriptors",
            names.len()
        )));
    }
    Ok((fds, names))
}
