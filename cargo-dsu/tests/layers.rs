//! cargo-dsu's layout (issue 16): imports go one way, from the commands down to the analysis, and
//! no file grows past about 600 lines. `tools/layers.py` builds the import graph (DESIGN.md,
//! section 3, says how).

use std::path::Path;
use std::process::Command;

#[test]
fn cargo_dsu_has_no_import_circle_and_no_overlong_file() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = here.join("../tools/layers.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(here.join("src"))
        .output()
        .expect("python3 runs tools/layers.py: install python3");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("analysis/mod.rs"),
        "the graph names the analysis layer:\n{report}"
    );
    assert!(out.status.success(), "import circle:\n{report}");
    let long: Vec<&str> = report.lines().filter(|l| l.starts_with("LONG:")).collect();
    assert!(long.is_empty(), "files over 600 lines: {long:?}");
}
