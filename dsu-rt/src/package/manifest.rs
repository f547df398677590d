//! The live update package (`.dsu`): a manifest and the patch library, in one file.
//!
//! ```text
//! magic        8 bytes   "DSUPKG\0\x01"
//! manifest_len u32 LE
//! manifest     JSON      (see `Manifest`)
//! library_len  u64 LE
//! library      bytes     the patch cdylib
//! signature    optional  "DSUSIG\0\x01", the signer's ed25519 public key (32 bytes), the
//!                        signature (64 bytes) of everything before it (see `signing`)
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::policy::Policy;
use super::signing::{self, PublicKey, SecretKey};

/// The magic bytes every package starts with (the last byte is the container version).
pub const MAGIC: &[u8; 8] = b"DSUPKG\0\x01";
/// The magic bytes of the signature block at the end of a signed package.
pub const SIGNATURE_MAGIC: &[u8; 8] = b"DSUSIG\0\x01";
/// Length of the signature block: magic, public key, signature.
pub const SIGNATURE_LEN: usize = 8 + 32 + 64;
/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;
/// Largest manifest accepted (a manifest is a few kilobytes).
pub const MAX_MANIFEST: usize = 16 << 20;

/// What a package says about itself and the update it carries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// The program the patch is for.
    pub program: String,
    /// The version it updates from, and the one it brings.
    pub from: String,
    pub to: String,
    pub rustc: String,
    pub target: String,
    pub dsu_rt: String,
    pub debug_assertions: bool,
    /// The base's components as the patch expects to find them (id and code fingerprint).
    #[serde(default)]
    pub base: Vec<BaseComponent>,
    /// What changed, as classified by `cargo dsu diff` (kept in the update history).
    #[serde(default)]
    pub changes: Vec<Change>,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub policy: Policy,
    /// How long prepare-to-die may take before the update is aborted.
    pub timeout_ms: u64,
    /// Which engine applies the update. For [`Engine::Handoff`] the package's payload (the
    /// `library` field) is the new version's executable, not a patch library.
    #[serde(default)]
    pub engine: Engine,
    /// Why `cargo dsu diff` chose the engine (one line each), kept in the update history.
    #[serde(default)]
    pub engine_reasons: Vec<String>,
    /// Hand-off only: how long the new process has, from its start, to take the state and
    /// report ready before it is killed and the old process resumes. 0 means the default.
    #[serde(default)]
    pub ready_timeout_ms: u64,
}

/// The two ways an update is applied (DESIGN.md sections 5 and 8).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// New code is loaded into the running process, which keeps running.
    #[default]
    InPlace,
    /// The new executable is started, takes the listening sockets, connections and state of
    /// the running process, and replaces it once it reports ready.
    Handoff,
}

impl Engine {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::InPlace => "in-place",
            Engine::Handoff => "handoff",
        }
    }
}

/// A base component the patch was built against.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BaseComponent {
    pub id: String,
    pub code: u64,
}

/// One classified change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub item: String,
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub line: u32,
    /// Category in the update taxonomy (1 = one component ... 6 = environment, 7 = whole program).
    pub category: u8,
    pub description: String,
}

/// What the running system must guarantee before the update is applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Constraints {
    /// Components that must be passive (besides those whose code or state changed, which
    /// always must).
    #[serde(default)]
    pub components: Vec<String>,
    /// Protocols that must be idle (besides those whose methods belong to updated components).
    #[serde(default)]
    pub protocols_idle: Vec<String>,
    /// Whether registered threads must be parked at an update point.
    #[serde(default)]
    pub park_threads: bool,
}

impl Manifest {
    /// A manifest for a patch built by this toolchain, with defaults for the rest.
    pub fn for_this_toolchain(program: &str, from: &str, to: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            program: program.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            rustc: crate::abi::build::RUSTC.to_string(),
            target: crate::abi::build::TARGET.to_string(),
            dsu_rt: crate::abi::build::DSU_RT.to_string(),
            debug_assertions: crate::abi::build::DEBUG_ASSERTIONS,
            base: Vec::new(),
            changes: Vec::new(),
            constraints: Constraints::default(),
            policy: Policy::default(),
            timeout_ms: 5_000,
            engine: Engine::InPlace,
            engine_reasons: Vec::new(),
            ready_timeout_ms: 0,
        }
    }
}

/// A package read into memory.
#[derive(Clone, Debug)]
pub struct Package {
    pub manifest: Manifest,
    pub library: Vec<u8>,
    /// The key whose valid signature covered the bytes this package was read from.
    signer: Option<PublicKey>,
}

/// Why a file is not a usable package.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot read the package {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a dsu package (it does not start with the dsu magic bytes); build one with `cargo dsu diff OLD NEW -o FILE`")]
    BadMagic,
    #[error("the package is truncated: {0}; copy it again or rebuild it")]
    Truncated(&'static str),
    #[error("the package's manifest is invalid: {0}")]
    Manifest(String),
    #[error("the package uses manifest format {found}, this runtime reads format {expected}; rebuild it with a matching cargo-dsu")]
    Format { found: u32, expected: u32 },
    #[error("the package has {0} bytes after its library; it is corrupt")]
    Trailing(usize),
    #[error(
        "the package's signature by key {key} does not match its contents: the package was \
         changed after it was signed (or the signature is corrupt); rebuild and sign it again"
    )]
    BadSignature { key: String },
    #[error("the package's signature block holds an invalid public key")]
    BadSignerKey,
}

impl Package {
    /// An unsigned package.
    pub fn new(manifest: Manifest, library: Vec<u8>) -> Package {
        Package {
            manifest,
            library,
            signer: None,
        }
    }

    /// The key that signed the file this package was read from, if it was signed (the
    /// signature was checked when the package was read).
    pub fn signer(&self) -> Option<&PublicKey> {
        self.signer.as_ref()
    }

    /// Serialises the package, unsigned.
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = serde_json::to_vec_pretty(&self.manifest).expect("a manifest serialises");
        let mut out = Vec::with_capacity(8 + 4 + manifest.len() + 8 + self.library.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        out.extend_from_slice(&manifest);
        out.extend_from_slice(&(self.library.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.library);
        out
    }

    /// Serialises the package and signs it with `key`.
    pub fn to_signed_bytes(&self, key: &SecretKey) -> Vec<u8> {
        let mut out = self.to_bytes();
        let signature = key.sign(&signing::digest(&out));
        out.extend_from_slice(SIGNATURE_MAGIC);
        out.extend_from_slice(&key.public().to_bytes());
        out.extend_from_slice(&signature);
        out
    }

    /// Parses a package, checking every length against the data, and its signature if it has
    /// one.
    pub fn from_bytes(b: &[u8]) -> Result<Package, PackageError> {
        if b.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(b) {
                PackageError::Truncated("it ends inside the magic bytes")
            } else {
                PackageError::BadMagic
            });
        }
        if &b[..8] != MAGIC {
            return Err(PackageError::BadMagic);
        }
        let rest = &b[8..];
        let len = u32::from_le_bytes(
            rest.get(..4)
                .ok_or(PackageError::Truncated(
                    "it ends before the manifest length",
                ))?
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        if len > MAX_MANIFEST {
            return Err(PackageError::Manifest(format!(
                "it claims {len} bytes, more than the {MAX_MANIFEST} accepted"
            )));
        }
        let rest = &rest[4..];
        let manifest_bytes = rest
            .get(..len)
            .ok_or(PackageError::Truncated("it ends inside the manifest"))?;
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| PackageError::Manifest(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(PackageError::Format {
                found: manifest.format,
                expected: MANIFEST_FORMAT,
            });
        }
        let rest = &rest[len..];
        let lib_len = u64::from_le_bytes(
            rest.get(..8)
                .ok_or(PackageError::Truncated("it ends before the library length"))?
                .try_into()
                .expect("8 bytes"),
        );
        let rest = &rest[8..];
        if (rest.len() as u64) < lib_len {
            return Err(PackageError::Truncated("it ends inside the library"));
        }
        let (library, trailer) = rest.split_at(lib_len as usize);
        let signer = match trailer.len() {
            0 => None,
            SIGNATURE_LEN if trailer.starts_with(SIGNATURE_MAGIC) => {
                let key: [u8; 32] = trailer[8..40].try_into().expect("32 bytes");
                let signature: [u8; 64] = trailer[40..].try_into().expect("64 bytes");
                let key = PublicKey::from_bytes(key).ok_or(PackageError::BadSignerKey)?;
                let body = &b[..b.len() - SIGNATURE_LEN];
                if !key.verify(&signing::digest(body), &signature) {
                    return Err(PackageError::BadSignature { key: key.id() });
                }
                Some(key)
            }
            n if SIGNATURE_MAGIC.starts_with(&trailer[..n.min(8)]) && n < SIGNATURE_LEN => {
                return Err(PackageError::Truncated("it ends inside the signature"));
            }
            n => return Err(PackageError::Trailing(n)),
        };
        Ok(Package {
            manifest,
            library: library.to_vec(),
            signer,
        })
    }

    /// Reads a package file.
    pub fn read(path: &Path) -> Result<Package, PackageError> {
        let b = std::fs::read(path).map_err(|source| PackageError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Package::from_bytes(&b)
    }

    /// Writes a package file, unsigned.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_whole(path, &self.to_bytes())
    }

    /// Writes a package file signed with `key`.
    pub fn write_signed(&self, path: &Path, key: &SecretKey) -> std::io::Result<()> {
        write_whole(path, &self.to_signed_bytes(key))
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so a reader (a
/// process applying the package, `cargo dsu apply`) sees the old file or the new one, never a
/// half-written one, even while two builds of the same pair write the same output.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Package {
        Package::new(
            Manifest::for_this_toolchain("p", "v1", "v2"),
            vec![1, 2, 3, 4],
        )
    }

    #[test]
    fn a_package_file_is_replaced_whole_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.dsu");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let p = sample();
        p.write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), p.to_bytes());
        // A write that cannot land (the path is a directory) changes nothing and cleans up.
        let taken = dir.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        assert!(p.write(&taken).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let q = Package::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(q.manifest, p.manifest);
        assert_eq!(q.library, p.library);
    }

    #[test]
    fn every_truncation_is_reported_not_misread() {
        let b = sample().to_bytes();
        for cut in 0..b.len() {
            let e = Package::from_bytes(&b[..cut]).unwrap_err();
            assert!(
                matches!(e, PackageError::Truncated(_) | PackageError::Manifest(_)),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn a_signed_package_names_its_signer_and_any_changed_byte_is_caught() {
        let key = SecretKey::from_seed([9; 32]);
        let b = sample().to_signed_bytes(&key);
        let p = Package::from_bytes(&b).unwrap();
        assert_eq!(p.signer(), Some(&key.public()));
        assert_eq!(p.library, sample().library);
        assert!(Package::from_bytes(&sample().to_bytes())
            .unwrap()
            .signer()
            .is_none());
        // Every byte is covered: the magic, the manifest, the library, the key, the signature.
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x20;
            let e = Package::from_bytes(&t);
            assert!(
                e.as_ref()
                    .map_or(true, |p| p.signer() != Some(&key.public())),
                "flipping byte {i} of {} went unnoticed",
                b.len()
            );
        }
        // A cut signature is reported as such.
        for cut in b.len() - SIGNATURE_LEN + 1..b.len() {
            assert!(matches!(
                Package::from_bytes(&b[..cut]),
                Err(PackageError::Truncated(_))
            ));
        }
    }

    #[test]
    fn foreign_bytes_are_not_a_package() {
        assert!(matches!(
            Package::from_bytes(b"\x7fELF\x02\x01\x01\0\0\0\0\0"),
            Err(PackageError::BadMagic)
        ));
    }
}
