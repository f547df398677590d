//! The stream: what the old process passes besides descriptors, and how states are written
//! into it and read back.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::abi::desc::payload_message;
use crate::sockets::SavedConnection;
use crate::update::record::UpdateRecord;

/// The variable that tells a process it was started by a hand-off (the descriptor number of
/// its end of the channel).
pub(crate) const FD_ENV: &str = crate::sockets::HANDOFF_FD_ENV;
/// Descriptor name of the control socket.
pub(crate) const CONTROL: &str = "K";
/// Tells the new process that pre-copied batches come before the descriptors
/// (`precopy.rs`).
pub(crate) const PRECOPY_ENV: &str = "DSU_HANDOFF_PRECOPY";
/// Version of the stream format.
pub(crate) const FORMAT: u32 = 1;

/// Everything the old process passes besides descriptors.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stream {
    pub(crate) format: u32,
    pub(crate) program: String,
    pub(crate) version: String,
    pub(crate) pid: u32,
    pub(crate) components: Vec<SavedState>,
    pub(crate) globals: Vec<SavedState>,
    pub(crate) connections: Vec<SavedConnection>,
    pub(crate) history: Vec<UpdateRecord>,
    pub(crate) next_id: u64,
}

/// One component instance's or global's state.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct SavedState {
    /// The component's (or global's) id.
    pub(crate) id: String,
    /// Which instance of the component, in registration order.
    pub(crate) instance: usize,
    /// The state type's id and schema fingerprint in the old process.
    pub(crate) state: String,
    pub(crate) schema: u64,
    /// The serialized state; `None` for a `rebuild` state, which the new `main` builds.
    #[serde(with = "bytes_opt")]
    pub(crate) bytes: Option<Vec<u8>>,
}

/// A byte string as a MessagePack byte string (not an array of integers): `serialize_with`.
pub(super) fn ser_bytes<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// The other way: `deserialize_with`.
pub(super) fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    Ok(bytes_opt::ByteBuf::deserialize(d)?.0)
}

/// Byte strings as MessagePack byte strings (not arrays of integers).
mod bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Bytes(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(|b| b.0))
    }

    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub(super) struct ByteBuf(pub(super) Vec<u8>);
    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

/// Serializes the value behind `p` (a `*const T`) for a hand-off.
///
/// # Safety
/// `p` must point at a live `T`.
pub unsafe fn save_state<T: Serialize>(p: *const ()) -> Result<Vec<u8>, String> {
    // SAFETY: caller's contract.
    let v = unsafe { &*(p as *const T) };
    let mut out = Vec::new();
    encode(v, &mut out)?;
    Ok(out)
}

/// The stream's format: MessagePack with struct fields by name. Self-describing, so a value
/// of another shape than the reader's type is an error ("missing field `x`"), not garbage; and
/// the fastest such format measured for kvstore's keyspace (against CBOR with ciborium: 2.3x
/// to read, 1.6x to write).
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
    v.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(|e| e.to_string())
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(b).map_err(|e| match e {
        rmp_serde::decode::Error::Syntax(msg) => msg,
        e => e.to_string(),
    })
}

/// Deserializes a boxed `T` written by [`save_state`]; returns the box's pointer.
pub fn load_state<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<*mut (), String> {
    let v: T = decode(b)?;
    Ok(Box::into_raw(Box::new(v)) as *mut ())
}

/// Runs `f`, turning a panic into an error; both kinds of failure say `what` was being done.
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(p) => Err(format!("{what} panicked: {}", payload_message(&*p))),
    }
}

/// The most a frame's length is trusted for before its bytes come: a larger frame grows its
/// buffer as the bytes arrive, so a length the old process cannot have meant costs nothing.
const TRUSTED_LEN: usize = 64 << 20;

/// Reads a length (8 bytes, little-endian) and that many bytes: `what` says which, in errors.
pub(super) fn read_sized(mut r: impl Read, what: &str) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|e| format!("receiving {what}: {e}"))?;
    let len = u64::from_le_bytes(len);
    if len == 0 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity((len as usize).min(TRUSTED_LEN));
    r.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("receiving {what} ({len} bytes): {e}"))?;
    if (bytes.len() as u64) < len {
        return Err(format!(
            "receiving {what}: the channel ended after {} of {len} bytes",
            bytes.len()
        ));
    }
    Ok(Some(bytes))
}

/// Writes `bytes` as [`read_sized`] reads them: their length (8 bytes, little-endian), then
/// the bytes.
pub(super) fn write_sized(mut w: impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)
}

/// Reads the pause's stream: its length, then its bytes, decoded.
pub(super) fn read_stream(chan: impl Read) -> Result<Stream, String> {
    let bytes = read_sized(chan, "the state")?.unwrap_or_default();
    decode(&bytes).map_err(|e| format!("the state stream is unreadable: {e}"))
}

/// Checks a stream and the names of the descriptors that came with it, before anything of
/// them is used: the format, and that each descriptor is a listener (`L name`), a connection
/// with its description in the stream (`C name`), or the control socket.
pub(super) fn check_stream(stream: &Stream, names: &[&str]) -> Result<(), String> {
    if stream.format != FORMAT {
        return Err(format!(
            "the old process streams format {}, this version reads format {FORMAT}",
            stream.format
        ));
    }
    for name in names {
        if name.strip_prefix("L ").is_some() || *name == CONTROL {
            continue;
        }
        let Some(c) = name.strip_prefix("C ") else {
            return Err(format!("an unexpected descriptor named {name:?}"));
        };
        if !stream.connections.iter().any(|d| d.name == c) {
            return Err(format!("connection `{c}` came without its description"));
        }
    }
    Ok(())
}
