//! The files an update's `migrate` hooks stage (`dsu::write_staged`): begun before the hooks
//! run, moved into place when the update commits, deleted when it rolls back.
//!
//! Moving them into place is a small transaction of its own, so that a process killed at any
//! moment leaves every file entirely as the old version wrote it or entirely as the new one
//! did (DESIGN.md §5, "Crash safety"):
//!
//! 1. a commit record (`.dsu-commit`, in the data directory) lists every target and whether it
//!    existed, and is synced before any file moves;
//! 2. each target that existed is renamed to `NAME.dsu-backup`, and its staged file over it;
//! 3. once the update is to commit, [`Committed::finish`] deletes the record (from that moment
//!    the new files are the files), records the new version in `.dsu-format`, and deletes the
//!    backups. The gates open only after it.
//!
//! A process that dies with the record still there never told anyone the update committed,
//! and the next start ([`recover`]) puts the old files back. A start also deletes the staged
//! files of an update that died before its commit began.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::abi::staged::{
    staged_files as list, staging_path, suffixed, StagedFile, BACKUP_SUFFIX, STAGED_SUFFIX,
};
use crate::package::signing::hex;

/// The commit record's name, in the data directory.
pub(crate) const RECORD: &str = ".dsu-commit";
/// The version-record's name: which version's `migrate` last moved the files to its format.
pub(crate) const FORMAT: &str = ".dsu-format";
const RECORD_HEADER: &str = "DSUCOMMIT1";

/// The data directory the program named (`RuntimeBuilder::data_dir`).
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The program's data directory: commit records go there from now on (the first one set
/// stays).
pub(crate) fn set_data_dir(dir: &Path) {
    let _ = DATA_DIR.set(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()));
}

/// From now on `dsu::write_staged` stages into this update.
pub(crate) fn begin() {
    *list() = Some(Vec::new());
}

/// The update rolls back: the staged files are deleted, the targets were never touched.
pub(crate) fn discard() {
    for f in list().take().unwrap_or_default() {
        let _ = std::fs::remove_file(&f.staged);
    }
}

/// Staged files moved into place, their old versions kept until [`Committed::finish`].
#[must_use = "an update that commits must finish its staged files, or a restart puts the old ones back"]
pub(crate) struct Committed {
    record: Option<PathBuf>,
    /// (target, its backup if it existed), in the order they were moved.
    done: Vec<(PathBuf, Option<PathBuf>)>,
}

impl Committed {
    /// The update commits: the record goes, then the backups. Called before the gates open, so
    /// that nothing the new version acknowledges is written into files a restart would undo.
    /// `version` is the new version, written to `.dsu-format` (see [`check_format`]).
    pub(crate) fn finish(self, program: &str, version: &str) {
        let Some(record) = self.record else { return };
        let dir = record.parent().map(Path::to_path_buf).unwrap_or_default();
        // The commit point on disk: with the record gone, a restart keeps the new files.
        let _ = std::fs::remove_file(&record);
        sync_dir(&dir);
        let _ = crate::abi::staged::write_synced(
            &dir.join(FORMAT),
            format!("{program} {version}\n").as_bytes(),
        );
        for (_, backup) in &self.done {
            if let Some(b) = backup {
                let _ = std::fs::remove_file(b);
            }
        }
    }
}

/// The update is to commit: each staged file replaces its target, in the order they were
/// staged, under a commit record (module docs). A failure part-way puts back every file
/// already replaced and deletes the staged ones; the update then rolls back with the files as
/// they were.
pub(crate) fn commit() -> Result<Committed, String> {
    let files = list().take().unwrap_or_default();
    if files.is_empty() {
        return Ok(Committed {
            record: None,
            done: Vec::new(),
        });
    }
    let record = record_dir(&files).join(RECORD);
    let entries: Vec<(PathBuf, bool)> = files
        .iter()
        .map(|f| (f.target.clone(), f.target.exists()))
        .collect();
    if let Err(e) = write_record(&record, &entries) {
        for f in &files {
            let _ = std::fs::remove_file(&f.staged);
        }
        let _ = std::fs::remove_file(&record);
        return Err(format!(
            "cannot write the commit record {} ({e}); every file is as the old version left it",
            record.display()
        ));
    }
    let mut done: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    for (n, f) in files.iter().enumerate() {
        if let Err(e) = replace(f, &mut done) {
            undo_moves(done);
            for f in &files[n..] {
                let _ = std::fs::remove_file(&f.staged);
            }
            let _ = std::fs::remove_file(&record);
            return Err(format!(
                "the files `migrate` staged could not be moved into place ({e}); every file \
                 is as the old version left it"
            ));
        }
    }
    for (target, _) in &entries {
        sync_dir(target.parent().unwrap_or(Path::new(".")));
    }
    Ok(Committed {
        record: Some(record),
        done,
    })
}

/// Puts back, last first, every file already moved into place.
fn undo_moves(done: Vec<(PathBuf, Option<PathBuf>)>) {
    for (target, backup) in done.into_iter().rev() {
        match backup {
            Some(b) => {
                let _ = std::fs::rename(&b, &target);
            }
            None => {
                let _ = std::fs::remove_file(&target);
            }
        }
    }
}

/// Where the commit record goes: the data directory, or else the first target's directory
/// (a start recovers only the data directory: a program that stages files names it).
fn record_dir(files: &[StagedFile]) -> PathBuf {
    if let Some(d) = DATA_DIR.get() {
        return d.clone();
    }
    files[0]
        .target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The record: a header line, then `1 HEX` or `0 HEX` per target (it existed or not; the
/// path's bytes in hex, so that any path fits on a line).
fn write_record(path: &Path, entries: &[(PathBuf, bool)]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut text = format!("{RECORD_HEADER}\n");
    for (target, existed) in entries {
        let target = std::path::absolute(target)?;
        text.push_str(&format!(
            "{} {}\n",
            u8::from(*existed),
            hex(target.as_os_str().as_bytes())
        ));
    }
    crate::abi::staged::write_synced(path, text.as_bytes())?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

fn read_record(text: &str) -> Option<Vec<(PathBuf, bool)>> {
    use std::os::unix::ffi::OsStringExt;
    let mut lines = text.lines();
    if lines.next()? != RECORD_HEADER {
        return None;
    }
    lines
        .map(|l| {
            let (flag, path) = l.split_once(' ')?;
            let existed = match flag {
                "1" => true,
                "0" => false,
                _ => return None,
            };
            Some((
                PathBuf::from(std::ffi::OsString::from_vec(unhex(path)?)),
                existed,
            ))
        })
        .collect()
}

/// Syncs a directory, so that the renames in it are on disk (best effort: some file systems
/// cannot).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Moves one staged file over its target, recording what to undo in `done`.
fn replace(f: &StagedFile, done: &mut Vec<(PathBuf, Option<PathBuf>)>) -> Result<(), String> {
    let backup = f
        .target
        .exists()
        .then(|| suffixed(&f.target, BACKUP_SUFFIX));
    if let Some(b) = &backup {
        std::fs::rename(&f.target, b)
            .map_err(|e| format!("cannot move {} aside: {e}", f.target.display()))?;
    }
    if let Err(e) = std::fs::rename(&f.staged, &f.target) {
        if let Some(b) = &backup {
            let _ = std::fs::rename(b, &f.target);
        }
        let _ = std::fs::remove_file(&f.staged);
        return Err(format!(
            "cannot move {} to {}: {e}",
            f.staged.display(),
            f.target.display()
        ));
    }
    done.push((f.target.clone(), backup));
    Ok(())
}

/// At start, in the program's data directory `dir`: undoes an on-disk commit a crash
/// interrupted (the record is still there: every target is put back as the old version left
/// it), and deletes what an update that died left beside the files (`NAME.dsu-staged` of one
/// that never began its commit, `NAME.dsu-backup` of one that finished it). Returns a line
/// per file it changed, for the program's log.
pub(crate) fn recover(dir: &Path) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let record = dir.join(RECORD);
    match std::fs::read_to_string(&record) {
        Ok(text) => {
            let entries = read_record(&text).ok_or_else(|| {
                format!(
                    "the commit record {} is not one dsu wrote; the files it would name \
                     cannot be checked. Look at the files beside it (NAME.dsu-backup is the \
                     old version of NAME), put them right, and delete the record",
                    record.display()
                )
            })?;
            for (target, existed) in entries {
                done.extend(put_back(&target, existed)?);
            }
            std::fs::remove_file(&record)
                .map_err(|e| format!("cannot delete {}: {e}", record.display()))?;
            sync_dir(dir);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", record.display())),
    }
    let leftovers = match std::fs::read_dir(dir) {
        Ok(l) => l,
        // Nothing written yet: nothing to recover.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => {
            return Err(format!(
                "cannot read the data directory {}: {e}",
                dir.display()
            ))
        }
    };
    for entry in leftovers.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(STAGED_SUFFIX) || name.ends_with(BACKUP_SUFFIX) {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| format!("cannot delete the leftover {}: {e}", path.display()))?;
            done.push(format!("deleted the leftover {}", path.display()));
        }
    }
    Ok(done)
}

/// One target of an interrupted commit, put back as the old version left it.
fn put_back(target: &Path, existed: bool) -> Result<Option<String>, String> {
    let (backup, staged) = (suffixed(target, BACKUP_SUFFIX), staging_path(target));
    let _ = std::fs::remove_file(&staged);
    if backup.exists() {
        std::fs::rename(&backup, target).map_err(|e| {
            format!(
                "cannot put back {} from {}: {e}",
                target.display(),
                backup.display()
            )
        })?;
        return Ok(Some(format!(
            "put back {} as the old version left it (an update's commit was interrupted)",
            target.display()
        )));
    }
    if !existed && target.exists() {
        std::fs::remove_file(target)
            .map_err(|e| format!("cannot delete {}: {e}", target.display()))?;
        return Ok(Some(format!(
            "deleted {}, which an interrupted update had created",
            target.display()
        )));
    }
    Ok(None)
}

/// At start, in the data directory: refuses a version older than the one whose `migrate` last
/// moved the files to its format (`.dsu-format`, written when such an update commits), which
/// might not read them. The same version, a newer one, or another program's record is fine.
pub(crate) fn check_format(dir: &Path, program: &str, version: &str) -> Result<(), String> {
    let path = dir.join(FORMAT);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let Some((theirs_program, theirs)) = text.trim().split_once(' ') else {
        return Err(format!(
            "{} is not one dsu wrote (it should say `PROGRAM VERSION`); delete it if the files \
             beside it are in this version's format",
            path.display()
        ));
    };
    if theirs_program != program || theirs == version || newer(version, theirs) {
        return Ok(());
    }
    Err(format!(
        "the files in {} were moved to the format of {program} {theirs} by a live update \
         (its `migrate`), and this is {program} {version}, which may not read them: start \
         version {theirs} or newer. If the files are back as this version writes them, delete \
         {}",
        dir.display(),
        path.display()
    ))
}

/// Whether dotted version `a` is newer than `b` (`0.10.0` > `0.9.1`); a part that is not a
/// number (`1.0.0-rc1`) makes them incomparable, which is not newer.
fn newer(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
    match (parts(a), parts(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
