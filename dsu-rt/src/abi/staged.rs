//! Staged files: what a `migrate` hook writes to disk becomes part of the update's
//! transaction. The list of staged files is the host's (a [`Shared`]), so that a patch's copy
//! of the runtime, which runs the hook, stages into the update the host's manager commits.
//!
//! This layer keeps the list and writes files; `update/` begins, commits and discards.

use std::io::Write;
use std::path::{Path, PathBuf};
#[cfg(not(dsu_off))]
use std::sync::Mutex;

#[cfg(not(dsu_off))]
use super::shared::Shared;

/// A staged file: `staged` replaces `target` when the update commits.
#[cfg(not(dsu_off))]
pub(crate) struct StagedFile {
    pub(crate) staged: PathBuf,
    pub(crate) target: PathBuf,
}

/// The files staged by the update in progress (None: no update is checking its new version).
#[cfg(not(dsu_off))]
pub(crate) static STAGED: Shared<Mutex<Option<Vec<StagedFile>>>> =
    Shared::new("staged-files", || Mutex::new(None));

/// The list of [`STAGED`] files, locked (a poisoned lock is taken as it is: the list is plain
/// data).
#[cfg(not(dsu_off))]
pub(crate) fn staged_files() -> std::sync::MutexGuard<'static, Option<Vec<StagedFile>>> {
    STAGED.get().lock().unwrap_or_else(|p| p.into_inner())
}

/// Added to a target's name for its staged new version (until the update commits).
pub(crate) const STAGED_SUFFIX: &str = ".dsu-staged";
/// Added to a target's name for its old version while the commit moves the files.
pub(crate) const BACKUP_SUFFIX: &str = ".dsu-backup";

/// `path` with `suffix` added to its file name, beside it.
pub(crate) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The staging name of `path`: `NAME.dsu-staged` beside it.
pub(crate) fn staging_path(path: &Path) -> PathBuf {
    suffixed(path, STAGED_SUFFIX)
}

/// Writes `contents` to `path` as part of the update whose `migrate` hook is running: the
/// runtime moves the file into place when the update commits, and deletes it when the update
/// rolls back, so a rollback leaves the files as the old version wrote them. Until the commit
/// `path` is unchanged (the new file is `NAME.dsu-staged` beside it, synced to disk).
///
/// Outside an update's `migrate` (at start, say) the file is replaced at once, atomically:
/// written beside it, synced, renamed over it.
pub fn write_staged(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let path = path.as_ref();
    let staged = staging_path(path);
    write_synced(&staged, contents.as_ref())?;
    #[cfg(not(dsu_off))]
    {
        let mut list = staged_files();
        if let Some(files) = list.as_mut() {
            files.retain(|f| f.target != path);
            files.push(StagedFile {
                staged,
                target: path.to_path_buf(),
            });
            return Ok(());
        }
    }
    std::fs::rename(&staged, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })
}

/// Creates (or truncates) `path`, writes `contents` and syncs it.
pub(crate) fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(contents)?;
    f.sync_all()
}
