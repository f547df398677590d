//! Transfers that move a map's entries (a `HashMap<K, V>` whose `V` changed): the keys and the
//! values' unchanged fields are taken over, not cloned. Until the update commits, the old map
//! still owns them: a failed health check, or a conversion that panics half-way through the
//! map, leaves the old state exactly as it was, and the new map is freed without them.

use anyhow::Result;
use dsu::Outcome;
use dsu_tests::*;

fn dir(v: &str) -> std::path::PathBuf {
    program("dir", v)
}

const N: usize = 20_000;

fn v1_entry(i: usize) -> String {
    format!("name-of-{i} tag-k{i},second {}", i % 100)
}

/// Every entry reads back as v1 wrote it, after the map grew past its old table.
fn check_v1(c: &mut Conn) -> Result<()> {
    c.cmd(&format!("fill {}", 2 * N))?;
    for i in (0..2 * N).step_by(7) {
        assert_eq!(c.cmd(&format!("show k{i}"))?, v1_entry(i), "key k{i}");
    }
    assert_eq!(c.cmd("version")?, "v1");
    Ok(())
}

#[test]
fn a_rollback_after_moving_a_map_gives_every_entry_back_to_the_old_state() -> Result<()> {
    let exe = build_base(&dir("v1"))?;
    let unhealthy = build_patch(&dir("v1"), &dir("v2-health"))?;
    let panics = build_patch(&dir("v1"), &dir("v2-panic"))?;
    let good = build_patch(&dir("v1"), &dir("v2"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    c.cmd(&format!("fill {N}"))?;

    // The transfer moved every entry into the new map; the health check fails after it.
    let rec = p.apply(&unhealthy, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("dir self-test failed with {N} entries")),
        "{reason}"
    );
    check_v1(&mut c)?;

    // The conversion of one entry (score 13) panics part-way through the map: the entries
    // moved until then leave the half-built map without being dropped.
    let rec = p.apply(&panics, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    assert!(reason.contains("score 13 cannot be converted"), "{reason}");
    check_v1(&mut c)?;

    // And the update that commits: every entry converted, its fields carried over.
    let rec = p.apply(&good, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    assert_eq!(c.cmd("version")?, "v2");
    for i in (0..2 * N).step_by(7) {
        assert_eq!(
            c.cmd(&format!("show k{i}"))?,
            format!("{} seen=0", v1_entry(i)),
            "key k{i}"
        );
    }
    // The old map was freed without the moved entries: the new one lives on and grows.
    c.cmd(&format!("fill {}", 4 * N))?;
    assert_eq!(
        c.cmd(&format!("show k{}", 4 * N - 1))?,
        format!("{} seen=0", v1_entry(4 * N - 1))
    );
    let len = c.cmd("len")?;
    assert!(len.starts_with(&format!("{} ", 4 * N)), "{len}");
    Ok(())
}
