//! The files an update's `migrate` hooks stage (`dsu::write_staged`): begun before the hooks
//! run, moved into place when the update commits, deleted when it rolls back.

use std::path::PathBuf;

use crate::abi::staged::{staged_files as list, StagedFile};

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

/// The update commits: each staged file replaces its target, in the order they were staged.
/// A target that existed is first renamed to `NAME.dsu-backup`, so that a failure part-way
/// puts back every file already replaced (and deletes the staged ones); the update then rolls
/// back with the files as they were. The backups are deleted once every file is in place.
pub(crate) fn commit() -> Result<(), String> {
    let files = list().take().unwrap_or_default();
    // (target, its backup if it existed) for each file already moved into place.
    let mut done: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    for (n, f) in files.iter().enumerate() {
        if let Err(e) = replace(f, &mut done) {
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
            for f in &files[n..] {
                let _ = std::fs::remove_file(&f.staged);
            }
            return Err(format!(
                "the files `migrate` staged could not be moved into place ({e}); every file \
                 is as the old version left it"
            ));
        }
    }
    for (_, backup) in done {
        if let Some(b) = backup {
            let _ = std::fs::remove_file(b);
        }
    }
    Ok(())
}

/// Moves one staged file over its target, recording what to undo in `done`.
fn replace(f: &StagedFile, done: &mut Vec<(PathBuf, Option<PathBuf>)>) -> Result<(), String> {
    let backup = f.target.exists().then(|| {
        let mut name = f.target.file_name().unwrap_or_default().to_os_string();
        name.push(".dsu-backup");
        f.target.with_file_name(name)
    });
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

#[cfg(test)]
mod tests;
