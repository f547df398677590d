//! The demo's soak (`dsu-demo --soak N`), run as a whole process: kvstore under
//! redis-benchmark through updates in place and by hand-off, half of them meeting injected
//! faults. Needs redis-tools (`apt-get install redis-tools`; .ci/run installs it).

use std::process::Command;

/// The short soak: 24 updates (three of the demo's eight-step cycles: 9 by hand-off, 12
/// committed (6 of them hand-offs), 12 faulted). The long one is `cargo run -p dsu-tests --bin dsu-demo --
/// --soak` (100 updates; RELIABILITY.md has its figures).
#[test]
fn the_demo_soak_of_updates_handoffs_and_faults_loses_no_request_and_no_key() {
    let o = Command::new(env!("CARGO_BIN_EXE_dsu-demo"))
        .args(["--soak", "24"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "the soak failed:\n{out}\n{err}");
    eprintln!("{out}");
    assert!(
        out.contains("24 updates")
            && out.contains("12 committed, 6 of them by hand-off; 12 met an injected fault"),
        "{out}"
    );
    assert!(
        out.contains("error replies: 0; keys lost: 0 of 10000"),
        "{out}"
    );
}
