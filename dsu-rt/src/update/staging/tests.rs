//! Staged files: moved into place on commit, deleted on rollback, put back on a failed commit.

use super::*;
use crate::abi::staged::write_staged;

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// One test, in order: the list of staged files is process-wide.
#[test]
fn staged_files_follow_the_update() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    std::fs::write(&a, "old a").unwrap();
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // Outside an update: replaced at once.
    write_staged(&b, "b at start").unwrap();
    assert_eq!(read(&b), "b at start");
    assert_eq!(names(), ["a.db", "b.db"]);

    // A rollback: the targets never change, the staged files go.
    begin();
    write_staged(&a, "new a").unwrap();
    write_staged(&b, "new b").unwrap();
    assert_eq!((read(&a), read(&b)), ("old a".into(), "b at start".into()));
    assert_eq!(
        names(),
        ["a.db", "a.db.dsu-staged", "b.db", "b.db.dsu-staged"]
    );
    discard();
    assert_eq!((read(&a), read(&b)), ("old a".into(), "b at start".into()));
    assert_eq!(names(), ["a.db", "b.db"]);

    // A commit: both in place, nothing left beside them; a file staged twice, the last wins.
    let c = dir.path().join("c.db");
    begin();
    write_staged(&a, "new a").unwrap();
    write_staged(&c, "first c").unwrap();
    write_staged(&c, "new c").unwrap();
    commit().unwrap().finish("p", "2.0.0");
    assert_eq!((read(&a), read(&c)), ("new a".into(), "new c".into()));
    assert_eq!(names(), [".dsu-format", "a.db", "b.db", "c.db"]);
    assert_eq!(read(&dir.path().join(FORMAT)), "p 2.0.0\n");

    // A commit that fails part-way puts back what it had replaced.
    begin();
    write_staged(&a, "newer a").unwrap();
    write_staged(&b, "newer b").unwrap();
    // The second file cannot be moved into place: its staged copy is gone.
    std::fs::remove_file(dir.path().join("b.db.dsu-staged")).unwrap();
    let err = commit().err().unwrap();
    assert!(err.contains("as the old version left it"), "{err}");
    assert_eq!((read(&a), read(&b)), ("new a".into(), "b at start".into()));
    assert_eq!(names(), [".dsu-format", "a.db", "b.db", "c.db"]);

    // A commit the process died in (moved, never finished): a start puts the old files back
    // and deletes the one the update created.
    let d = dir.path().join("d.db");
    begin();
    write_staged(&a, "newest a").unwrap();
    write_staged(&d, "new d").unwrap();
    let moved = commit().unwrap();
    assert_eq!((read(&a), read(&d)), ("newest a".into(), "new d".into()));
    assert!(dir.path().join(RECORD).exists());
    std::mem::forget(moved);
    let log = recover(dir.path()).unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(read(&a), "new a");
    assert!(!d.exists());
    assert_eq!(names(), [".dsu-format", "a.db", "b.db", "c.db"]);
}

fn write(p: &std::path::Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

/// Each moment a crash can interrupt a commit at, built by hand, and what a start makes of it.
#[test]
fn a_start_puts_back_what_an_interrupted_commit_moved() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
    // a: moved aside and replaced; b: not reached; c: moved aside, its new one not yet in.
    write(&a, "new a");
    write(&suffixed(&a, ".dsu-backup"), "old a");
    write(&b, "old b");
    write(&suffixed(&b, ".dsu-staged"), "new b");
    write(&suffixed(&c, ".dsu-backup"), "old c");
    write(&suffixed(&c, ".dsu-staged"), "new c");
    write_record(
        &d.join(RECORD),
        &[(a.clone(), true), (b.clone(), true), (c.clone(), true)],
    )
    .unwrap();
    recover(d).unwrap();
    assert_eq!(
        (read(&a), read(&b), read(&c)),
        ("old a".into(), "old b".into(), "old c".into())
    );
    let mut names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    // Died after `migrate` staged, before the commit began: the staged file goes. Died after
    // the commit point, before the backups went: they go, the new files stay.
    write(&suffixed(&a, ".dsu-staged"), "never committed");
    write(&suffixed(&b, ".dsu-backup"), "older b");
    assert_eq!(recover(d).unwrap().len(), 2);
    assert_eq!((read(&a), read(&b)), ("old a".into(), "old b".into()));
    assert_eq!(
        recover(d).unwrap(),
        Vec::<String>::new(),
        "nothing left to do"
    );

    // A record dsu did not write is an error that says what to do, and changes nothing.
    write(&d.join(RECORD), "something else\n");
    let err = recover(d).unwrap_err();
    assert!(
        err.contains("not one dsu wrote") && err.contains("delete the record"),
        "{err}"
    );
    assert_eq!(read(&a), "old a");
}

#[test]
fn a_version_older_than_the_files_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(check_format(d, "kv", "1.0.0"), Ok(()), "no record");
    write(&d.join(FORMAT), "kv 6.0.0\n");
    assert_eq!(check_format(d, "kv", "6.0.0"), Ok(()));
    assert_eq!(check_format(d, "kv", "10.0.0"), Ok(()));
    assert_eq!(check_format(d, "other", "1.0.0"), Ok(()));
    let err = check_format(d, "kv", "5.0.0").unwrap_err();
    assert!(
        err.contains("kv 6.0.0") && err.contains("start version 6.0.0"),
        "{err}"
    );
    assert!(
        check_format(d, "kv", "6.0.0-rc1").is_err(),
        "not comparable: not newer"
    );
    write(&d.join(FORMAT), "garbage");
    assert!(check_format(d, "kv", "6.0.0")
        .unwrap_err()
        .contains("PROGRAM VERSION"));
}
