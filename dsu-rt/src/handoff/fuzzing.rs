//! The new process's reading of a hand-off channel, from bytes instead of a socket: what the
//! fuzz target `handoff_stream` (fuzz/) drives, and the seeds it starts from. Not public API.
//!
//! An input is a flags byte (bit 0: pre-copied batches come first, as with
//! `DSU_HANDOFF_PRECOPY`), the descriptors' names (a count byte, then each name as a length byte
//! and its bytes: descriptors themselves cannot travel in bytes), then what follows the
//! descriptors on the channel: the batches and their end frame, if any, and the stream.

use std::sync::Arc;
use std::time::Duration;

use super::engine::{stream, Predecessor};
use super::precopy::Chunk;
use super::receive::{forget_batches, take_batches, try_read_state};
use super::stream::{check_stream, encode, guarded, read_stream, write_sized};
use crate::abi::artifact::COMPONENTS;
use crate::abi::lazy::precopy::{new_epoch, sending, Mode};
use crate::call::component::Slot;
use crate::call::invoke::with_exclusive;
use crate::update::plan::{all_slots, whole_process};

/// Reads `input` (see the module's documentation) as a process started by a hand-off reads its
/// channel: the batches into the maps' mirrors, the stream, its format and descriptor names
/// checked; then every streamed state of a component this binary has is read as `register`
/// would read it, and dropped. Returns how many states were read, or why the hand-off would
/// have failed. What it leaves (mirrors no state took) is dropped, so inputs do not add up.
pub fn read_channel(input: &[u8]) -> Result<usize, String> {
    fn byte(r: &mut &[u8]) -> Result<u8, String> {
        let (b, rest) = r.split_first().ok_or("the input ended")?;
        *r = rest;
        Ok(*b)
    }
    let mut r = input;
    let flags = byte(&mut r)?;
    let mut names = Vec::new();
    for _ in 0..byte(&mut r)? {
        let len = usize::from(byte(&mut r)?);
        if r.len() < len {
            return Err("the input ended inside a descriptor's name".to_string());
        }
        let (name, rest) = r.split_at(len);
        names.push(String::from_utf8_lossy(name).into_owned());
        r = rest;
    }
    let result = (|| {
        if flags & 1 != 0 {
            take_batches(&mut r)?;
        }
        let stream = read_stream(&mut r)?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        check_stream(&stream, &names)?;
        let mut read = 0;
        for saved in stream.components.iter().filter(|s| s.bytes.is_some()) {
            let Some(desc) = COMPONENTS.iter().find(|d| d.id() == saved.id) else {
                continue;
            };
            let what = format!("component `{}` (instance {})", saved.id, saved.instance);
            let p = try_read_state(&what, saved, desc.state)?;
            // SAFETY: `p` is a box of this binary's state type of `desc`, just read, owned here.
            unsafe { (desc.drop_state)(p) };
            read += 1;
        }
        Ok(read)
    })();
    forget_batches();
    result
}

/// A valid input for [`read_channel`]: this process's registered components and globals as a
/// hand-off would send them (with pre-copied batches of their lazy maps when `precopy`). Only
/// for a process that serves no calls meanwhile (a seed generator): the states are read without
/// holding the components for the pause's stream.
pub fn seed_channel(precopy: bool) -> Result<Vec<u8>, String> {
    let slots: Vec<(usize, Arc<Slot>)> = all_slots(&whole_process(Duration::from_secs(5)));
    let mut out = vec![u8::from(precopy), 0];
    let frame = |out: &mut Vec<u8>, bytes: &[u8]| {
        write_sized(out, bytes).map_err(|e| format!("cannot write a frame: {e}"))
    };
    let epoch = new_epoch();
    if precopy {
        for (_, slot) in &slots {
            let layout = slot.current_table().desc.state;
            let Some(save) = layout.save else {
                continue;
            };
            let (bytes, batch) = with_exclusive(slot, "dsu: hand-off seed", |state| {
                sending(Mode::Batch, epoch, 1 << 16, || {
                    // SAFETY: `state` is a live state of the type `layout` describes, held.
                    guarded("seeding a batch", || unsafe { save(state) })
                })
            });
            if batch.maps == 0 {
                continue;
            }
            let chunk = Chunk {
                component: slot.ty.id.clone(),
                state: layout.id(),
                schema: layout.schema(),
                bytes: bytes?,
            };
            let mut f = Vec::new();
            encode(&chunk, &mut f)?;
            frame(&mut out, &f)?;
        }
        frame(&mut out, &[])?;
    }
    let from = Predecessor {
        program: "seed".to_string(),
        version: "1".to_string(),
        history: Vec::new(),
        next_id: 1,
    };
    let (bytes, _) = if precopy {
        sending(Mode::Final, epoch, 0, || stream(&slots, from)).0
    } else {
        stream(&slots, from)
    }?;
    frame(&mut out, &bytes)?;
    if precopy {
        // The maps forget what they sent, as after a hand-off that did not commit.
        super::precopy::forget(Duration::from_secs(5));
    }
    Ok(out)
}
