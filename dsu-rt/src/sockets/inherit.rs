//! Descriptors this process inherited, by name: from systemd socket activation
//! (`LISTEN_FDS`) or from a process hand-off, until a `listener` takes them.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use super::fd::lock;
use super::transport::NamedFd;

/// The variable a hand-off starts the new process with (see `handoff.rs`).
pub(crate) const HANDOFF_FD_ENV: &str = "DSU_HANDOFF_FD";
/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// Descriptors this process inherited and nobody has taken yet.
pub(super) fn inherited() -> &'static Mutex<Vec<NamedFd>> {
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
pub(super) fn systemd_fds(
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
pub(super) fn inherit(name: &str, fd: OwnedFd) {
    lock(inherited()).push(NamedFd {
        name: name.to_string(),
        fd,
    });
}

/// Puts a descriptor a hand-off brought among the inherited ones (a listener, found by name).
#[cfg_attr(dsu_off, allow(dead_code))]
pub(crate) fn inherit_named(name: String, fd: OwnedFd) {
    lock(inherited()).push(NamedFd { name, fd });
}

/// Names of inherited listeners nobody has taken.
#[cfg_attr(dsu_off, allow(dead_code))]
pub(crate) fn untaken_listeners() -> Vec<String> {
    lock(inherited()).iter().map(|f| f.name.clone()).collect()
}
