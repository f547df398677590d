//! Stable 64-bit fingerprints (FNV-1a), usable in `const` context.
//!
//! Fingerprints identify method signatures, state layouts and code versions across separately
//! compiled artifacts (the host binary and each patch). They must not depend on the process,
//! so std's randomly keyed hashers are out; FNV-1a is deterministic, tiny and const.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes a string.
pub const fn str(s: &str) -> u64 {
    bytes(OFFSET, s.as_bytes())
}

/// Continues a hash with more bytes.
pub const fn bytes(mut h: u64, b: &[u8]) -> u64 {
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u64;
        h = h.wrapping_mul(PRIME);
        i += 1;
    }
    h
}

/// Mixes a number into a hash.
pub const fn mix(h: u64, v: u64) -> u64 {
    bytes(h, &v.to_le_bytes())
}

/// Mixes a list of numbers into a hash.
pub const fn mix_all(mut h: u64, vs: &[u64]) -> u64 {
    let mut i = 0;
    while i < vs.len() {
        h = mix(h, vs[i]);
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vectors() {
        // FNV-1a 64 reference values.
        assert_eq!(super::str(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::str("a"), 0xaf63_dc4c_8601_ec8c);
        let h = super::str("field");
        assert_ne!(
            super::mix(super::mix(h, 1), 2),
            super::mix(super::mix(h, 2), 1)
        );
        assert_ne!(super::mix(h, 8), super::mix(h, 16));
    }
}
