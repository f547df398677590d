//! Type changes converted incrementally (`dsu::LazyMap`, issue 15): the update takes the maps
//! over as they are, calls convert the entries they touch, and a background pass converts the
//! rest. Until the update commits the old maps are whole: a health check that read (and so
//! converted) entries and then failed leaves the old version running on its state, at 10^6
//! entries. A second type change while entries of the first are left converts them first.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dsu::Outcome;
use dsu_tests::*;

fn lazy(v: &str) -> std::path::PathBuf {
    program("lazy", v)
}

/// Entries of the map of structs (the nested shape).
const N: usize = 1_000_000;
/// Entries of the byte map (kvstore's shape).
const K: usize = 100_000;

fn v1_item(i: usize) -> String {
    format!("name-of-{i} tag-k{i},second {}", i % 100)
}

/// The unconverted entries of both maps.
fn pending(c: &mut Conn) -> Result<(usize, usize)> {
    let r = c.cmd("pending")?;
    let mut it = r.split_whitespace().map(|n| n.parse::<usize>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => anyhow::bail!("`pending` answered {r:?}"),
    }
}

/// Waits for the background passes to convert every entry.
fn converted(c: &mut Conn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = pending(c)?;
        if p == (0, 0) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "entries still unconverted after 120 s: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_lazy_type_change_commits_at_once_converts_in_the_background_and_rolls_back_whole() -> Result<()>
{
    let exe = build_base(&lazy("v1"))?;
    let unhealthy = build_patch(&lazy("v1"), &lazy("v2-health"))?;
    let good = build_patch(&lazy("v1"), &lazy("v2"))?;
    let again = build_patch(&lazy("v2"), &lazy("v3"))?;
    let p = Process::start(&exe)?;
    let mut c = p.connect()?;
    c.cmd(&format!("fill {N}"))?;
    c.cmd(&format!("kfill {K}"))?;

    // The health check converts ten entries, then fails: the old maps run on, whole.
    let rec = p.apply(&unhealthy, None)?;
    assert_eq!(rec.outcome, Outcome::RolledBack, "{rec:#?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!("failed after reading 10 of {N} entries")),
        "{reason}"
    );
    eprintln!("rolled back at {N} entries: pause {:.2} ms", rec.pause_ms);
    assert_eq!(c.cmd("version")?, "v1");
    for i in (0..N).step_by(9973).chain(0..10) {
        assert_eq!(c.cmd(&format!("show k{i}"))?, v1_item(i), "key k{i}");
    }
    assert_eq!(c.cmd("len")?, format!("{N} puts={N}"));
    assert_eq!(pending(&mut c)?, (0, 0));
    // The old map is still its own: it grows, and the entries the check read are there.
    c.cmd("put k0 renamed 1")?;
    assert_eq!(c.cmd("show k0")?, "renamed tag-k0,second 1");
    c.cmd(&format!("put k{N} last 2"))?;

    // The update that commits: nothing is converted in the pause, so entries are left.
    let rec = p.apply(&good, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    eprintln!(
        "committed at {N} + {K} entries: pause {:.2} ms, transfer {:.2} ms",
        rec.pause_ms, rec.transfer_ms
    );
    let (left, kleft) = pending(&mut c)?;
    assert!(
        left > 0,
        "every entry was converted before the first call: {left}"
    );
    // Calls read entries while the background pass converts the others.
    assert_eq!(c.cmd("version")?, "v2");
    for i in (1..N).step_by(99_991) {
        assert_eq!(
            c.cmd(&format!("show k{i}"))?,
            format!("{} seen=0", v1_item(i)),
            "key k{i}"
        );
    }
    assert_eq!(c.cmd("show k0")?, "renamed tag-k0,second 1 seen=0");
    assert_eq!(c.cmd("kget key:17")?, "value-17 None");

    // A second type change at once, while entries of the first are left: the transfer
    // converts those first, the rest of the second is lazy again. The byte map, unchanged, keeps
    // its state and its pass.
    c.cmd(&format!("put k{} after 3", N + 1))?;
    let before = pending(&mut c)?;
    let rec = p.apply(&again, None)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    eprintln!(
        "left after the first commit: {left} + {kleft}; before the second: {before:?}; second \
         pause {:.2} ms",
        rec.pause_ms
    );
    assert_eq!(c.cmd("version")?, "v3");
    assert_eq!(
        c.cmd(&format!("show k{}", N + 1))?,
        format!("after tag-k{},second 3 seen=0 rank=0", N + 1)
    );
    converted(&mut c)?;
    // The status tells how the background pass went.
    let st = p.status()?;
    let dir = st
        .components
        .iter()
        .find(|c| c.id.ends_with("Dir"))
        .expect("Dir in the status");
    let conv = dir
        .conversion
        .clone()
        .expect("a conversion in Dir's status");
    assert_eq!((conv.left, conv.stopped), (0, false), "{conv:?}");
    assert!(conv.batches > 0 && conv.longest_batch_ms > 0.0, "{conv:?}");
    eprintln!("Dir's pass after the second update: {conv:?}");
    for i in (1..N).step_by(997) {
        assert_eq!(
            c.cmd(&format!("show k{i}"))?,
            format!("{} seen=0 rank=0", v1_item(i)),
            "key k{i}"
        );
    }
    for i in (0..K).step_by(101) {
        assert_eq!(c.cmd(&format!("kget key:{i}"))?, format!("value-{i} None"));
    }
    assert_eq!(c.cmd("len")?, format!("{} puts={}", N + 2, N + 3));
    Ok(())
}

/// The hand-off package v1 -> v2 of the lazy program (both maps change type).
fn handoff_package() -> Result<std::path::PathBuf> {
    let pkg = programs_target()
        .join("packages")
        .join("lazy-v1-to-v2-handoff.dsu");
    std::fs::create_dir_all(pkg.parent().expect("a directory"))?;
    let (v1, v2) = (lazy("v1"), lazy("v2"));
    let o = run_cargo_dsu([
        "diff".as_ref(),
        "--engine".as_ref(),
        "handoff".as_ref(),
        "-q".as_ref(),
        v1.as_os_str(),
        v2.as_os_str(),
        "-o".as_ref(),
        pkg.as_os_str(),
    ])?;
    ensure!(
        o.status.success(),
        "cargo dsu diff --engine handoff failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(pkg)
}

/// A pre-copying hand-off (issue 15, item 2): the lazy maps stream to the new process while
/// the old one serves and two clients write on; the pause sends only the slots written since.
/// Every write the old process acknowledged, before or during the pre-copy, reads back from the
/// new process, converted to v2's types; the entries filled before are all there.
#[test]
fn a_handoff_precopies_the_lazy_maps_and_every_acknowledged_write_reaches_the_new_process(
) -> Result<()> {
    const FILL: usize = 200_000;
    let exe = build_base(&lazy("v1"))?;
    let pkg = handoff_package()?;
    let mut p = Process::start(&exe)?;
    let mut c = p.connect()?;
    c.cmd(&format!("fill {FILL}"))?;
    c.cmd(&format!("kfill {K}"))?;
    // The old process drops its components before it exits: a `Drop` writes this marker.
    let marks = tempfile::tempdir()?;
    let marker = marks.path().join("dropped");
    assert_eq!(c.cmd(&format!("mark {}", marker.display()))?, "ok");
    let old_pid = p.pid();
    // A `&mut self` call that panics poisons Closer. A hand-off would carry its state on and
    // end the poison, so it is refused (no new process started) unless asked to.
    assert!(p.connect()?.cmd("poison").is_err());
    let rec = p.apply(&pkg, None)?;
    assert_eq!(rec.outcome, Outcome::Refused, "{rec:#?}");
    let reason = rec.reason.unwrap_or_default();
    ensure!(
        reason.contains("poisoned instances: Closer (fail)") && reason.contains("--clear-poison"),
        "{reason}"
    );
    assert_eq!(rec.new_pid, None);
    assert_eq!(c.cmd("version")?, "v1");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let stop = stop.clone();
            let port = p.port;
            std::thread::spawn(move || -> Result<Vec<usize>> {
                let mut c = Conn::open(port)?;
                let mut acked = Vec::new();
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // New keys, and keys filled before (sent by the first batches, written
                    // again: the pause must send them again).
                    let k = if i.is_multiple_of(2) {
                        format!("w{w}-{i}")
                    } else {
                        format!("k{}", (i * 7919 + w) % FILL)
                    };
                    let r = c.cmd(&format!("put {k} by-{w}-{i} {}", i % 1000))?;
                    ensure!(r == "ok", "put {k}: {r}");
                    acked.push(i);
                    i += 1;
                }
                Ok(acked)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let rec = p.apply_clearing_poison(&pkg)?;
    assert_eq!(rec.outcome, Outcome::Committed, "{rec:#?}");
    let new_pid = rec.new_pid.expect("the new pid");
    let _new = KillPid(new_pid);
    assert_eq!(rec.cleared_poison, vec!["Closer (fail)".to_string()]);
    let pre = rec.precopy.clone().expect("the hand-off pre-copied");
    eprintln!(
        "pre-copy: {:.1} ms, {} rounds, {} batches, {} entries, longest hold {:.2} ms, {} left \
         for the pause; pause {:.2} ms",
        pre.ms,
        pre.rounds,
        pre.batches,
        pre.entries,
        pre.longest_hold_ms,
        pre.left_at_pause,
        rec.pause_ms
    );
    assert!(
        pre.entries as usize >= FILL + K,
        "every entry was sent before the pause: {pre:?}"
    );
    assert!(
        (pre.left_at_pause as usize) < (FILL + K) / 10,
        "the pause sends what changed since, not the maps: {pre:?}"
    );
    // The writers go on against the new process, on the same connections.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut c = p.connect()?;
    assert_eq!(c.cmd("version")?, "v2");
    // The last write of each key wins: replay the writers' acknowledged writes in order.
    let mut want: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (w, h) in writers.into_iter().enumerate() {
        let acked = h.join().expect("a writer")?;
        assert!(acked.len() > 100, "writer {w} wrote {} times", acked.len());
        for i in acked {
            let k = if i.is_multiple_of(2) {
                format!("w{w}-{i}")
            } else {
                format!("k{}", (i * 7919 + w) % FILL)
            };
            want.insert(
                k.clone(),
                format!("by-{w}-{i} tag-{k},second {} seen=0", i % 1000),
            );
        }
    }
    for (k, v) in &want {
        assert_eq!(&c.cmd(&format!("show {k}"))?, v, "key {k}");
    }
    for i in (0..FILL).step_by(997) {
        let k = format!("k{i}");
        if !want.contains_key(&k) {
            assert_eq!(
                c.cmd(&format!("show {k}"))?,
                format!("name-of-{i} tag-k{i},second {} seen=0", i % 100),
                "key k{i}"
            );
        }
    }
    for i in (0..K).step_by(991) {
        assert_eq!(
            c.cmd(&format!("kget key:{i}"))?,
            format!("value-{i} None"),
            "key key:{i}"
        );
    }
    let len = c.cmd("len")?;
    let new_keys = want.keys().filter(|k| k.starts_with('w')).count();
    assert!(
        len.starts_with(&format!("{} ", FILL + new_keys)),
        "{len} (want {} entries)",
        FILL + new_keys
    );
    // The new process converts what the transfer took over, and takes writes.
    converted(&mut c)?;
    assert_eq!(c.cmd("put after x 1")?, "ok");
    assert_eq!(c.cmd("show after")?, "x tag-after,second 1 seen=0");
    // The stream carries no poison: the new process's Closer is not poisoned.
    let status = p.status()?;
    assert_eq!(status.pid, new_pid);
    let closer = status.components.iter().find(|s| s.id == "Closer").unwrap();
    assert!(closer.poisoned.is_empty(), "{:?}", closer.poisoned);
    // The old process has ended, and it dropped its components first (the new process, which
    // received the marker's path with the state, is still serving).
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.alive() {
        ensure!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&marker).context("the old process's Drop wrote no marker")?,
        format!("dropped by pid {old_pid}")
    );
    Ok(())
}
