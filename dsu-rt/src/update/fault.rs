//! Fault injection, for tests (RELIABILITY.md). A process started with `DSU_FAULT_FILE=PATH`
//! reads PATH when an in-place update starts. A line `POINT ACTION` there makes that update
//! fail (`fail`) or the process die by SIGKILL (`kill`) at POINT:
//!
//! - `prepare`: once every component is ready to die, as if prepare-to-die had timed out;
//! - `transfer`: after the transfers ran, as if one had failed;
//! - `check`: after `migrate` and the health checks, as if one had failed;
//! - `commit` (`kill` only): after the staged files were moved into place, before their
//!   commit record is deleted and the gates open.
//!
//! A hand-off reads it too, with two points of its own:
//!
//! - `send`: in the old process, once the new one has taken the stream and reported ready,
//!   before it is told to commit;
//! - `receive`: in the new process, once it has read the stream, before it reports ready (the
//!   old process passes the action on in `DSU_FAULT_RECEIVE`).
//!
//! The file is emptied once read, so one fault hits one update. Without the variable nothing
//! is read; an unreadable or malformed file refuses the update, saying why.

use std::path::PathBuf;

/// The variable that names the fault file.
pub(crate) const FILE_ENV: &str = "DSU_FAULT_FILE";
/// The variable that carries a `receive` fault's action (`fail` or `kill`) to the new process
/// of a hand-off.
pub(crate) const RECEIVE_ENV: &str = "DSU_FAULT_RECEIVE";

/// Where in an update a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    Prepare,
    Transfer,
    Check,
    Commit,
    Send,
    Receive,
}

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    at: Point,
    kill: bool,
}

/// The fault the next update is to meet, if the process has a fault file and it names one.
pub(crate) fn take() -> Result<Option<Fault>, String> {
    let Some(path) = std::env::var_os(FILE_ENV).map(PathBuf::from) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the fault file {}: {e}",
                path.display()
            ))
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let fault = parse(text.trim()).map_err(|e| {
        format!(
            "the fault file {} says {:?}: {e}",
            path.display(),
            text.trim()
        )
    })?;
    std::fs::write(&path, b"")
        .map_err(|e| format!("cannot empty the fault file {}: {e}", path.display()))?;
    Ok(Some(fault))
}

fn parse(line: &str) -> Result<Fault, String> {
    let mut words = line.split_whitespace();
    let at = match words.next().unwrap_or("") {
        "prepare" => Point::Prepare,
        "transfer" => Point::Transfer,
        "check" => Point::Check,
        "commit" => Point::Commit,
        "send" => Point::Send,
        "receive" => Point::Receive,
        other => {
            return Err(format!(
                "no fault point `{other}` (one of prepare, transfer, check, commit, send, \
                 receive)"
            ))
        }
    };
    let kill = match words.next().unwrap_or("") {
        "fail" if at == Point::Commit => {
            return Err("a fault at `commit` can only be `kill`".into())
        }
        "fail" => false,
        "kill" => true,
        other => return Err(format!("no fault action `{other}` (fail or kill)")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected `{extra}` after the action"));
    }
    Ok(Fault { at, kill })
}

/// The action to pass to a hand-off's new process in [`RECEIVE_ENV`], if `fault` is for it.
pub(crate) fn receive_action(fault: Option<Fault>) -> Option<&'static str> {
    let f = fault.filter(|f| f.at == Point::Receive)?;
    Some(if f.kill { "kill" } else { "fail" })
}

/// In a hand-off's new process: the `receive` fault the old process passed on, as a fault.
pub(crate) fn passed_on() -> Option<Fault> {
    let kill = match std::env::var(RECEIVE_ENV).ok()?.as_str() {
        "kill" => true,
        "fail" => false,
        _ => return None,
    };
    Some(Fault {
        at: Point::Receive,
        kill,
    })
}

/// Meets `fault` at `at`: nothing if it is for another point; else the process is killed, or
/// the reason the update fails is returned.
pub(crate) fn hit(fault: Option<Fault>, at: Point) -> Result<(), String> {
    match fault {
        Some(f) if f.at == at && f.kill => {
            log::warn!("dsu: injected fault: killing the process at {at:?}");
            // SAFETY: kill(2) on this process; it does not return for SIGKILL.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL returned")
        }
        Some(f) if f.at == at => Err(format!(
            "injected fault at {} ({FILE_ENV}); rolled back, the old version keeps running \
             with its state",
            format!("{at:?}").to_lowercase()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lines_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse("check fail"),
            Ok(Fault {
                at: Point::Check,
                kill: false
            })
        );
        assert_eq!(
            parse(" commit   kill "),
            Ok(Fault {
                at: Point::Commit,
                kill: true
            })
        );
        assert!(parse("commit fail").unwrap_err().contains("only be `kill`"));
        assert!(parse("swap fail")
            .unwrap_err()
            .contains("no fault point `swap`"));
        assert!(parse("check").unwrap_err().contains("no fault action ``"));
        assert!(parse("check fail now")
            .unwrap_err()
            .contains("unexpected `now`"));
        let r = parse("receive kill").ok();
        assert_eq!(receive_action(r), Some("kill"));
        assert_eq!(receive_action(parse("send kill").ok()), None);
        assert_eq!(hit(r, Point::Send), Ok(()));
        let f = parse("transfer fail").ok();
        assert_eq!(hit(f, Point::Check), Ok(()));
        assert!(hit(f, Point::Transfer)
            .unwrap_err()
            .contains("injected fault at transfer"));
    }
}
