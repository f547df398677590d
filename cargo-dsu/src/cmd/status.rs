//! `cargo dsu status`: the running version, components and update history of a process.

use std::path::Path;

use anyhow::{anyhow, Result};
use dsu::control::{request, Request};

use super::{describe_record, Format};
use crate::exit;
use crate::shell::Shell;

pub(crate) fn status(shell: &Shell, socket: &Path, format: Format) -> Result<i32> {
    let resp = request(socket, &Request::Status)?;
    let st = resp.status.ok_or_else(|| {
        anyhow!(
            "the process did not report its status: {}",
            resp.error.unwrap_or_default()
        )
    })?;
    match format {
        Format::Json => shell.out(&serde_json::to_string_pretty(&serde_json::json!({
            "format": "dsu-status/1",
            "status": st,
        }))?),
        Format::Human => {
            let mut s = format!(
                "{} {} (pid {}, rustc {}, dsu-rt {})\n",
                st.program, st.version, st.pid, st.rustc, st.dsu_rt
            );
            s.push_str("\ncomponents:\n");
            for c in &st.components {
                s.push_str(&format!(
                    "  {:<24} version {:<3} instances {:<4} in flight {}",
                    c.id, c.version, c.instances, c.in_flight
                ));
                if !c.poisoned.is_empty() {
                    s.push_str(&format!(
                        "  POISONED ({} instance(s); a `{}` call panicked)",
                        c.poisoned.len(),
                        c.poisoned[0]
                    ));
                }
                if let Some(v) = &c.conversion {
                    s.push_str(&match (v.left, v.stopped) {
                        (_, true) => format!(
                            "  conversion STOPPED with {} entries left (a conversion panicked; see the program's log)",
                            v.left
                        ),
                        (0, false) => format!(
                            "  converted ({} batches, {:.0} ms, longest {:.2} ms)",
                            v.batches, v.elapsed_ms, v.longest_batch_ms
                        ),
                        (n, false) => format!(
                            "  converting: {n} entries left ({} batches, longest {:.2} ms)",
                            v.batches, v.longest_batch_ms
                        ),
                    });
                }
                s.push('\n');
            }
            if !st.staged.is_empty() {
                s.push_str(&format!("\nstaged updates: {:?}\n", st.staged));
            }
            s.push_str("\nhistory:\n");
            if st.history.is_empty() {
                s.push_str("  (no updates)\n");
            }
            for r in &st.history {
                for (i, line) in describe_record(r).lines().enumerate() {
                    s.push_str(if i == 0 { "  " } else { "    " });
                    s.push_str(line);
                    s.push('\n');
                }
            }
            shell.out(&s);
        }
    }
    Ok(exit::SUCCESS)
}
