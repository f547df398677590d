//! Named descriptors that outlive a process: listeners handed to a program by systemd socket
//! activation (`LISTEN_FDS`), and the transport that passes descriptors, each with its name,
//! to another process over a Unix socket (`SCM_RIGHTS`), the base of the process hand-off
//! engine (DESIGN.md section 8).
//!
//! A program asks for its listeners by name, so that the same code binds a fresh socket when it
//! starts on its own and takes over the inherited one when it was started with one:
//!
//! ```no_run
//! let redis = dsu::listener("redis", || std::net::TcpListener::bind("127.0.0.1:6379"))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The transport's wire format, repeated until a frame with no descriptor:
//!
//! ```text
//! count      u32 LE      descriptors in this frame (at most MAX_FDS_PER_FRAME), SCM_RIGHTS
//!                        attached to this frame's first byte
//! names_len  u32 LE
//! names      UTF-8       the descriptors' names, each followed by '\n'
//! ```

use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

/// Most descriptors sent in one frame (the kernel accepts at most 253 per message).
pub const MAX_FDS_PER_FRAME: usize = 200;
/// Longest name list accepted in one frame.
const MAX_NAMES_LEN: usize = 1 << 20;
/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

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

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed descriptor hand-off: {what}"),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Descriptors this process inherited and nobody has taken yet.
fn inherited() -> &'static Mutex<Vec<NamedFd>> {
    static INHERITED: OnceLock<Mutex<Vec<NamedFd>>> = OnceLock::new();
    INHERITED.get_or_init(|| Mutex::new(take_systemd_fds()))
}

/// The descriptors systemd socket activation described in the environment, made
/// close-on-exec; the variables are removed so that children do not see them.
fn take_systemd_fds() -> Vec<NamedFd> {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = systemd_fds(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    let fds = match parsed {
        Ok(fds) => fds,
        Err(e) => {
            log::warn!("dsu: ignoring systemd's socket activation variables: {e}");
            return Vec::new();
        }
    };
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    fds.into_iter()
        .map(|(name, fd)| {
            // SAFETY: systemd passed `fd` to this process, and it is taken only here, once.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            NamedFd {
                name,
                // SAFETY: as above: the descriptor is open and owned by nobody else.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            }
        })
        .collect()
}

/// Reads systemd's variables: `LISTEN_PID` must be this process, `LISTEN_FDS` descriptors
/// start at 3, and `LISTEN_FDNAMES` names them (`unknown` when absent, as systemd says).
fn systemd_fds(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Vec<(String, RawFd)>, String> {
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
    if pid != me {
        // Meant for another process (a parent that did not clear them).
        return Ok(Vec::new());
    }
    let count: usize = count
        .parse()
        .ok()
        .filter(|n| *n <= 4096)
        .ok_or_else(|| format!("LISTEN_FDS={count:?} is not a descriptor count"))?;
    let names: Vec<String> = match names {
        Some(n) => n.split(':').map(str::to_string).collect(),
        None => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES names {} descriptors, LISTEN_FDS says {count}",
            names.len()
        ));
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (name, SD_LISTEN_FDS_START + i as RawFd))
        .collect())
}

/// Puts `fd` among the inherited descriptors under `name`, as systemd's would be.
#[cfg(test)]
fn inherit(name: &str, fd: OwnedFd) {
    lock(inherited()).push(NamedFd {
        name: name.to_string(),
        fd,
    });
}

/// The TCP listener named `name`: the one this process inherited under that name (from systemd
/// socket activation), or else a fresh one from `bind`. An inherited descriptor of that name
/// that is not a listening TCP socket is an error, not silently replaced.
pub fn listener(
    name: &str,
    bind: impl FnOnce() -> io::Result<TcpListener>,
) -> io::Result<TcpListener> {
    let taken = {
        let mut all = lock(inherited());
        all.iter()
            .position(|f| f.name == name)
            .map(|i| all.remove(i))
    };
    let Some(named) = taken else {
        return bind();
    };
    if !is_listening_tcp(named.fd.as_raw_fd()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the inherited descriptor named `{name}` is not a listening TCP socket; check \
                 the socket unit's FileDescriptorName= and ListenStream= settings"
            ),
        ));
    }
    Ok(TcpListener::from(named.fd))
}

fn is_listening_tcp(fd: RawFd) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_arrive_with_their_names_and_still_work() {
        let (a, b) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut pipe_r, pipe_w) = std::io::pipe().unwrap();
        send_fds(&a, &[("web", listener.as_fd()), ("log", pipe_w.as_fd())]).unwrap();
        drop((listener, pipe_w));
        let got = recv_fds(&b).unwrap();
        let names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["web", "log"]);
        let mut got = got.into_iter();
        let web = TcpListener::from(got.next().unwrap().fd);
        assert_eq!(web.local_addr().unwrap(), addr);
        let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
        let (mut conn, _) = web.accept().unwrap();
        let mut c = client.join().unwrap();
        c.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let mut log = std::fs::File::from(got.next().unwrap().fd);
        log.write_all(b"ok").unwrap();
        drop(log);
        let mut s = String::new();
        pipe_r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "ok");
    }

    #[test]
    fn more_descriptors_than_one_frame_holds_arrive_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..450)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let names: Vec<String> = (0..450).map(|i| format!("conn-{i}")).collect();
        let fds: Vec<(&str, BorrowedFd<'_>)> = names
            .iter()
            .zip(&files)
            .map(|(n, f)| (n.as_str(), f.as_fd()))
            .collect();
        let sender = std::thread::scope(|s| {
            let h = s.spawn(|| send_fds(&a, &fds));
            let got = recv_fds(&b).unwrap();
            h.join().unwrap().unwrap();
            got
        });
        assert_eq!(sender.len(), 450);
        assert!(sender.iter().zip(&names).all(|(f, n)| &f.name == n));
        // Close-on-exec, as received.
        // SAFETY: F_GETFD on an open descriptor reads its flags.
        let flags = unsafe { libc::fcntl(sender[0].fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn a_closed_channel_or_a_lying_frame_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(
            recv_fds(&b).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // A frame that announces a descriptor it does not carry.
        let (a, b) = UnixStream::pair().unwrap();
        let mut frame = Vec::new();
        frame.extend_from_slice(&1u32.to_le_bytes());
        frame.extend_from_slice(&2u32.to_le_bytes());
        frame.extend_from_slice(b"x\n");
        (&a).write_all(&frame).unwrap();
        let e = recv_fds(&b).unwrap_err().to_string();
        assert!(e.contains("announces 1 descriptors, 0 arrived"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(send_fds(&a, &[("two\nlines", f.as_fd())]).is_err());
    }

    #[test]
    fn systemds_variables_are_read_as_systemd_documents_them() {
        assert_eq!(systemd_fds(None, None, None, 7), Ok(Vec::new()));
        assert_eq!(
            systemd_fds(Some("8"), Some("2"), None, 7),
            Ok(Vec::new()),
            "meant for another process"
        );
        assert_eq!(
            systemd_fds(Some("7"), Some("2"), Some("redis:admin"), 7),
            Ok(vec![("redis".to_string(), 3), ("admin".to_string(), 4)])
        );
        assert_eq!(
            systemd_fds(Some("7"), Some("1"), None, 7),
            Ok(vec![("unknown".to_string(), 3)])
        );
        assert!(systemd_fds(Some("7"), Some("2"), Some("one"), 7)
            .unwrap_err()
            .contains("names 1 descriptors"));
        assert!(systemd_fds(Some("x"), Some("1"), None, 7).is_err());
        assert!(systemd_fds(Some("7"), Some("-1"), None, 7).is_err());
    }

    #[test]
    fn a_named_listener_is_taken_over_once_and_checked() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        inherit("sockets-test-web", OwnedFd::from(l));
        let mut fresh = false;
        let got = listener("sockets-test-web", || {
            fresh = true;
            TcpListener::bind("127.0.0.1:0")
        })
        .unwrap();
        assert!(!fresh);
        assert_eq!(got.local_addr().unwrap(), addr);
        // Taken: the next request for that name binds.
        let again = listener("sockets-test-web", || TcpListener::bind("127.0.0.1:0")).unwrap();
        assert_ne!(again.local_addr().unwrap(), addr);
        // An inherited descriptor that is no listener is refused, not replaced.
        inherit(
            "sockets-test-file",
            OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
        );
        let e = listener("sockets-test-file", || TcpListener::bind("127.0.0.1:0")).unwrap_err();
        assert!(e.to_string().contains("not a listening TCP socket"), "{e}");
    }
}
