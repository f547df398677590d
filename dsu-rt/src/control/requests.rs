//! What each control request does: apply, commit, status, history, to the update manager.

use super::protocol::{Request, Response};
use crate::manager::manager;
use crate::package::Package;
use crate::update::record::ApplyOptions;

/// Executes one request and answers it.
pub(super) fn execute(req: Request) -> Response {
    let manager = manager();
    match req {
        Request::Status => Response {
            ok: true,
            error: None,
            report: None,
            status: Some(manager.status()),
        },
        Request::Apply {
            package,
            timeout_ms,
            policy,
            clear_poison,
        } => match Package::read(&package) {
            Err(e) => {
                // Refused before anything was opened; kept in the history like every refusal.
                let rec = manager.refuse_unreadable(&package, e.to_string());
                Response {
                    ok: true,
                    error: None,
                    report: Some(rec),
                    status: None,
                }
            }
            Ok(pkg) => {
                let report = manager.apply(
                    pkg,
                    &ApplyOptions {
                        timeout_ms,
                        policy,
                        clear_poison,
                    },
                );
                Response {
                    ok: true,
                    error: None,
                    report: Some(report),
                    status: None,
                }
            }
        },
        Request::Commit {
            id,
            timeout_ms,
            clear_poison,
        } => {
            match manager.commit_staged(
                id,
                &ApplyOptions {
                    timeout_ms,
                    policy: None,
                    clear_poison,
                },
            ) {
                Ok(report) => Response {
                    ok: true,
                    error: None,
                    report: Some(report),
                    status: None,
                },
                Err(e) => Response::error(e),
            }
        }
    }
}
