//! `cargo dsu keygen`: an ed25519 key pair for signing packages.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dsu::signing::SecretKey;

use crate::exit;
use crate::shell::Shell;

pub(crate) fn keygen(shell: &Shell, output: &Path, force: bool) -> Result<i32> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let public_path = PathBuf::from(format!("{}.pub", output.display()));
    if !force {
        for p in [output, public_path.as_path()] {
            if p.exists() {
                bail!(
                    "{} exists; refusing to overwrite a key (pass --force to replace it, or \
                     choose another path with -o)",
                    p.display()
                );
            }
        }
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("cannot read random bytes from /dev/urandom")?;
    let key = SecretKey::from_seed(seed);
    let write = |path: &Path, mode: u32, text: String| -> Result<()> {
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(format!("{text}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(output, 0o600, key.to_file_line())?;
    write(&public_path, 0o644, key.public().to_string())?;
    shell.status(
        "Created",
        format!(
            "key {}: secret {} (keep it private), public {}",
            key.public().id(),
            output.display(),
            public_path.display()
        ),
    );
    shell.out(&format!("{}\n", key.public()));
    Ok(exit::SUCCESS)
}
