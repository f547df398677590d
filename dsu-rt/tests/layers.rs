//! dsu-rt's layout (issue 16): imports go one way, abi → call → package → update → sockets →
//! handoff → manager → control → runtime, with no circle between files or between folders, and
//! no file grows past about 600 lines. `tools/layers.py` builds the import graph (DESIGN.md,
//! section 3, says how).

use std::path::Path;
use std::process::Command;

#[test]
fn dsu_rt_has_no_import_circle_and_no_overlong_file() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = here.join("../tools/layers.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(here.join("src"))
        .output()
        .expect("python3 runs tools/layers.py: install python3");
    let report = String::from_utf8_lossy(&out.stdout);
    // The graph is read from the layers themselves: an empty report would pass the checks below.
    for file in [
        "call/gate.rs",
        "update/swap.rs",
        "handoff/engine.rs",
        "manager.rs",
    ] {
        assert!(report.contains(file), "the graph names {file}:\n{report}");
    }
    assert!(out.status.success(), "import circle:\n{report}");
    let long: Vec<&str> = report.lines().filter(|l| l.starts_with("LONG:")).collect();
    assert!(long.is_empty(), "files over 600 lines: {long:?}");
    // abi/ is the bottom layer: it names nothing else of the crate.
    let abi_up: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("folder abi "))
        .collect();
    assert!(abi_up.is_empty(), "abi/ imports other layers: {abi_up:?}");
    // The hot path (call/) depends on abi/ only.
    let call = report
        .lines()
        .find(|l| l.starts_with("folder call "))
        .expect("call/ has edges");
    assert!(call.trim_end().ends_with("-> abi"), "call/ imports: {call}");
}
