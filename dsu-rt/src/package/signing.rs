//! Signed packages: ed25519 keys, their text form, and what exactly a signature covers.
//!
//! A signature covers the whole package as written: magic, manifest and library. What is
//! signed is `DOMAIN || SHA-512(package bytes before the signature block)`, so that a
//! signature made for a package can never be taken for a signature of anything else.
//!
//! Key files are one line of text, so that they can be pasted into configuration:
//!
//! ```text
//! dsu-ed25519-public-key 3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c
//! dsu-ed25519-secret-key <64 hex digits>          (mode 0600)
//! ```

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};

/// Prefix of the message a package signature signs.
pub const DOMAIN: &[u8] = b"dsu live update package signature v1\0";
const PUBLIC_TAG: &str = "dsu-ed25519-public-key";
const SECRET_TAG: &str = "dsu-ed25519-secret-key";

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what}: expected `{tag} <64 hex digits>` (a file written by `cargo dsu keygen`), \
         found {found:?}"
    )]
    Format {
        what: String,
        tag: &'static str,
        found: String,
    },
    #[error("{what}: {value} is not a valid ed25519 public key")]
    Invalid { what: String, value: String },
}

/// A public key: what a process trusts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

/// A secret key: what `cargo dsu diff --sign` signs with. Never printed.
pub struct SecretKey(SigningKey);

impl PublicKey {
    /// The raw key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The key from its raw bytes (checked to be a valid curve point).
    pub fn from_bytes(bytes: [u8; 32]) -> Option<PublicKey> {
        VerifyingKey::from_bytes(&bytes)
            .ok()
            .map(|_| PublicKey(bytes))
    }

    /// A short name for messages: the first 8 bytes in hex.
    pub fn id(&self) -> String {
        hex(&self.0[..8])
    }

    /// Parses `dsu-ed25519-public-key HEX` (or the bare 64 hex digits).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let what = "a public key".to_string();
        let bytes = parse_tagged(text, PUBLIC_TAG, &what)?;
        PublicKey::from_bytes(bytes).ok_or(KeyError::Invalid {
            what,
            value: text.trim().to_string(),
        })
    }

    /// Reads a file of trusted public keys: one per line; blank lines and `#` comments are
    /// skipped.
    pub fn read_list(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
        let text = read(path)?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let what = format!("{} line {}", path.display(), n + 1);
            let bytes = parse_tagged(line, PUBLIC_TAG, &what)?;
            keys.push(PublicKey::from_bytes(bytes).ok_or(KeyError::Invalid {
                what,
                value: line.to_string(),
            })?);
        }
        Ok(keys)
    }

    /// Checks `signature` over the package body whose SHA-512 is `digest`.
    pub(crate) fn verify(&self, digest: &[u8; 64], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(&message(digest), &signature).is_ok()
    }
}

impl fmt::Display for PublicKey {
    /// The key file's line: `dsu-ed25519-public-key HEX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_TAG} {}", hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl SecretKey {
    /// A new key from 32 random bytes (the caller reads them from the OS).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// The key file's line: `dsu-ed25519-secret-key HEX`.
    pub fn to_file_line(&self) -> String {
        format!("{SECRET_TAG} {}", hex(&self.0.to_bytes()))
    }

    /// Reads a secret key file written by `cargo dsu keygen`.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        let text = read(path)?;
        let what = format!("the secret key {}", path.display());
        let seed = parse_tagged(text.trim(), SECRET_TAG, &what)?;
        Ok(SecretKey::from_seed(seed))
    }

    /// Signs a package body whose SHA-512 is `digest`.
    pub(crate) fn sign(&self, digest: &[u8; 64]) -> [u8; 64] {
        self.0.sign(&message(digest)).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().id())
    }
}

/// SHA-512 of a package body.
pub(crate) fn digest(body: &[u8]) -> [u8; 64] {
    Sha512::digest(body).into()
}

fn message(digest: &[u8; 64]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + digest.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(digest);
    m
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn parse_tagged(text: &str, tag: &'static str, what: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let value = match text.split_once(char::is_whitespace) {
        Some((t, v)) if t == tag => v.trim(),
        Some(_) => "",
        None => text,
    };
    unhex32(value).ok_or_else(|| KeyError::Format {
        what: what.to_string(),
        tag,
        found: text.chars().take(100).collect(),
    })
}

/// Lowercase hex of `bytes`, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text_form() {
        let sk = SecretKey::from_seed([7; 32]);
        let pk = sk.public();
        assert_eq!(PublicKey::parse(&pk.to_string()).unwrap(), pk);
        assert_eq!(
            PublicKey::parse(&hex(&pk.to_bytes())).unwrap(),
            pk,
            "bare hex"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, sk.to_file_line()).unwrap();
        assert_eq!(SecretKey::read(&path).unwrap().public(), pk);
    }

    #[test]
    fn a_signature_verifies_only_for_its_key_and_its_bytes() {
        let sk = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let d = digest(b"package bytes");
        let sig = sk.sign(&d);
        assert!(sk.public().verify(&d, &sig));
        assert!(!other.public().verify(&d, &sig));
        assert!(!sk.public().verify(&digest(b"package bytez"), &sig));
    }

    #[test]
    fn bad_key_text_says_what_was_expected() {
        let e = PublicKey::parse("ssh-ed25519 AAAA")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dsu-ed25519-public-key <64 hex digits>"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted");
        let good = SecretKey::from_seed([3; 32]).public();
        std::fs::write(
            &path,
            format!("# ops\n{good}\n\n{good}  # twice\nnot-a-key\n"),
        )
        .unwrap();
        let e = PublicKey::read_list(&path).unwrap_err().to_string();
        assert!(e.contains("line 5"), "{e}");
        std::fs::write(&path, format!("# ops\n{good}\n")).unwrap();
        assert_eq!(PublicKey::read_list(&path).unwrap(), vec![good]);
    }
}
