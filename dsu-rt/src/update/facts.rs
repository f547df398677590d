//! Checks before code: a patch library's build facts (`abi/facts.rs`) are read from the file
//! itself and compared with this process's before the library is opened, so a library that
//! does not match runs none of its code, not even a static initialiser. What needs the library
//! opened comes after (`load.rs`): the builds of tokio, tracing and log (`TypeId`s, known only
//! at run time) and the descriptors (Rust statics, with pointers the loader relocates), which
//! `plan` compares with the running program.

use crate::abi::facts::{self, MAGIC, SECTION};

/// Why a library's facts refuse it, in the words of `LoadError`.
#[derive(Debug)]
pub(crate) enum FactsError {
    /// No readable facts section.
    Missing(String),
    /// A fact differs: what (as "built {what}"), the library's value, this process's.
    Mismatch(&'static str, String, String),
}

/// Compares the facts in `library` (the bytes of an ELF shared object) with this build's.
pub(crate) fn check(library: &[u8]) -> Result<(), FactsError> {
    let section = elf_section(library, SECTION).map_err(FactsError::Missing)?;
    let text = std::str::from_utf8(section)
        .ok()
        .filter(|t| t.starts_with(MAGIC))
        .ok_or_else(|| {
            FactsError::Missing(format!("its `{SECTION}` section does not hold dsu's facts"))
        })?;
    let ours = facts::text();
    for (key, what) in [
        ("format", "with patch format"),
        ("dsu_rt", "against dsu-rt"),
        ("rustc", "with rustc"),
        ("target", "for target"),
        ("debug_assertions", "with debug assertions"),
        ("shared_dependencies", "with shared dependencies"),
    ] {
        let host = facts::value(ours, key).unwrap_or_default();
        let Some(patch) = facts::value(text, key) else {
            return Err(FactsError::Missing(format!("its facts do not say `{key}`")));
        };
        if patch != host {
            return Err(FactsError::Mismatch(what, patch.into(), host.into()));
        }
    }
    Ok(())
}

/// The bytes of the section named `name` in an ELF64 little-endian file; every offset is
/// checked against the file, so a truncated or malformed file is an error, not a panic.
fn elf_section<'a>(file: &'a [u8], name: &str) -> Result<&'a [u8], String> {
    let bytes = |at: u64, len: u64| -> Result<&'a [u8], String> {
        let end = at.checked_add(len).filter(|&e| e <= file.len() as u64);
        end.map(|e| &file[at as usize..e as usize])
            .ok_or_else(|| "it is cut short (an offset points past its end)".to_string())
    };
    let u16_at = |at: u64| bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u64);
    let u32_at = |at: u64| bytes(at, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as u64);
    let u64_at = |at: u64| bytes(at, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    if bytes(0, 6)? != b"\x7fELF\x02\x01" {
        return Err("it is not a 64-bit little-endian ELF file".into());
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    if shentsize < 64 {
        return Err("its section headers are malformed".into());
    }
    let header = |i: u64| -> Result<(u64, u64, u64), String> {
        let h = shoff + i * shentsize;
        Ok((u32_at(h)?, u64_at(h + 24)?, u64_at(h + 32)?))
    };
    let (_, names_at, names_len) = header(shstrndx)?;
    let names = bytes(names_at, names_len)?;
    for i in 0..shnum {
        let (name_at, at, len) = header(i)?;
        let Some(rest) = names.get(name_at as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return bytes(at, len);
        }
    }
    Err(format!("it has no `{name}` section"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary is an ELF file with the runtime in it, so it carries this build's facts.
    fn this_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn a_file_with_this_builds_facts_passes_and_a_changed_one_does_not() {
        let mut file = this_binary();
        check(&file).unwrap();
        let at = file
            .windows(MAGIC.len())
            .position(|w| w == MAGIC.as_bytes())
            .unwrap();
        let key = b"\ndsu_rt=";
        let v = at
            + file[at..]
                .windows(key.len())
                .position(|w| w == key)
                .unwrap()
            + key.len();
        file[v] = b'X';
        match check(&file) {
            Err(FactsError::Mismatch(what, patch, host)) => {
                assert_eq!(what, "against dsu-rt");
                assert!(patch.starts_with('X') && host == crate::abi::build::DSU_RT);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_without_facts_or_cut_short_is_refused_without_a_panic() {
        let file = this_binary();
        for cut in [0, 5, 64, file.len() / 2] {
            assert!(
                matches!(check(&file[..cut]), Err(FactsError::Missing(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            check(b"not an elf file"),
            Err(FactsError::Missing(_))
        ));
        // The section renamed: no facts.
        let mut renamed = file.clone();
        let name = SECTION.as_bytes();
        for i in 0..renamed.len() - name.len() {
            if &renamed[i..i + name.len()] == name && renamed[i + name.len()] == 0 {
                renamed[i + name.len() - 1] = b'z';
            }
        }
        match check(&renamed) {
            Err(FactsError::Missing(m)) => assert!(m.contains("no `.dsu_facts` section"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
