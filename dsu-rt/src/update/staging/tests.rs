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
    commit().unwrap();
    assert_eq!((read(&a), read(&c)), ("new a".into(), "new c".into()));
    assert_eq!(names(), ["a.db", "b.db", "c.db"]);

    // A commit that fails part-way puts back what it had replaced.
    begin();
    write_staged(&a, "newer a").unwrap();
    write_staged(&b, "newer b").unwrap();
    // The second file cannot be moved into place: its staged copy is gone.
    std::fs::remove_file(dir.path().join("b.db.dsu-staged")).unwrap();
    let err = commit().unwrap_err();
    assert!(err.contains("as the old version left it"), "{err}");
    assert_eq!((read(&a), read(&b)), ("new a".into(), "b at start".into()));
    assert_eq!(names(), ["a.db", "b.db", "c.db"]);
}
