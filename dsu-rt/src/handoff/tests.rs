use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::receive::*;
use super::stream::*;
use super::successor::*;
use crate::sockets::{self};
use crate::update::record::UpdateRecord;

/// A successor whose process is `sleep` and whose channel's other end is returned: the test
/// plays the new process on it.
fn fake_successor() -> (Successor, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = Command::new("sleep").arg("30").spawn().unwrap();
    let reader = BufReader::new(ours.try_clone().unwrap());
    let s = Successor {
        child,
        chan: ours,
        reader,
    };
    (s, theirs)
}

fn record() -> UpdateRecord {
    let mut rec = UpdateRecord::new(7, "1.0.0".into(), "2.0.0".into(), Vec::new());
    rec.started_unix_ms = 0;
    rec.outcome = crate::Outcome::Committed;
    rec.attempts = 1;
    rec.engine = crate::package::Engine::Handoff;
    rec.new_pid = Some(42);
    rec
}

/// Plays a new process that takes the sockets and the stream, then answers `answer` after
/// `delay`.
fn new_process(
    peer: UnixStream,
    delay: Duration,
    answer: &'static str,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        sockets::recv_fds(&peer).unwrap();
        let mut len = [0u8; 8];
        (&peer).read_exact(&mut len).unwrap();
        let mut stream = vec![0u8; u64::from_le_bytes(len) as usize];
        (&peer).read_exact(&mut stream).unwrap();
        std::thread::sleep(delay);
        let _ = (&peer).write_all(answer.as_bytes());
        stream
    })
}

#[test]
fn ready_counts_only_within_the_ready_timeout() {
    let feed = |delay, answer, timeout| {
        let (mut s, peer) = fake_successor();
        let new_side = new_process(peer, delay, answer);
        let r = s.feed(b"state", sockets::Snapshot::default(), None, timeout);
        assert_eq!(new_side.join().unwrap(), b"state");
        s.kill();
        r
    };
    assert_eq!(
        feed(Duration::ZERO, "ready\n", Duration::from_secs(10)),
        Ok(())
    );
    // Late by a few milliseconds: the kernel's receive timeout is rounded up to its clock
    // tick and would hand over this `ready`, but it came after the deadline.
    let late = feed(
        Duration::from_millis(3),
        "ready\n",
        Duration::from_millis(1),
    )
    .unwrap_err();
    assert!(
        late.contains("did not report ready within 1 ms; it was killed"),
        "{late}"
    );
    let failed = feed(Duration::ZERO, "failed: no room\n", Duration::from_secs(10));
    assert_eq!(failed, Err("the new process failed: no room".to_string()));
}

#[test]
fn a_commit_counts_only_once_the_new_process_confirms_it() {
    // Confirmed: the new process got the record and says it serves.
    let (mut s, peer) = fake_successor();
    let new_side = std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(&peer).read_line(&mut line).unwrap();
        (&peer).write_all(b"serving\n").unwrap();
        line
    });
    assert_eq!(s.commit(&record()), Ok(()));
    let line = new_side.join().unwrap();
    let json = line.strip_prefix("commit ").expect("a commit line");
    let got: UpdateRecord = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(got, record());
    s.kill();

    // The new process died after `ready`, before the commit: the commit fails, and the
    // manager kills the process and rolls back.
    let (mut s, peer) = fake_successor();
    drop(peer);
    assert!(s.commit(&record()).is_err());
    s.kill();
    assert!(s.child.try_wait().unwrap().is_some(), "killed and reaped");

    // It died after reading the commit, before opening its sockets: not confirmed either.
    let (mut s, peer) = fake_successor();
    let new_side = std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(&peer).read_line(&mut line).unwrap();
    });
    assert_eq!(
        s.commit(&record()),
        Err("the new process did not confirm the commit".to_string())
    );
    new_side.join().unwrap();
    s.kill();

    // A wrong answer is no confirmation.
    let (mut s, peer) = fake_successor();
    let new_side = std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(&peer).read_line(&mut line).unwrap();
        (&peer).write_all(b"failed: no\n").unwrap();
    });
    assert!(s.commit(&record()).is_err());
    new_side.join().unwrap();
    s.kill();
}

#[test]
fn systemd_hears_ready_and_the_new_main_pid_on_a_path_or_an_abstract_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sd_notify(path.to_str().unwrap(), "MAINPID=42\nREADY=1\n").unwrap();
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"MAINPID=42\nREADY=1\n");

    use std::os::linux::net::SocketAddrExt;
    let name = format!("dsu-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let abstract_listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    sd_notify(&format!("@{name}"), "READY=1\n").unwrap();
    let n = abstract_listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");
}

#[test]
fn states_round_trip_and_decoding_errors_read_well() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Old {
        map: HashMap<Vec<u8>, u64>,
    }
    #[derive(Deserialize, Debug)]
    struct New {
        #[allow(dead_code)]
        map: HashMap<Vec<u8>, u64>,
        #[allow(dead_code)]
        extra: u64,
    }
    let old = Old {
        map: [(b"k".to_vec(), 7)].into_iter().collect(),
    };
    // SAFETY: `old` is a live `Old`.
    let bytes = unsafe { save_state::<Old>(&old as *const Old as *const ()) }.unwrap();
    let back = load_state::<Old>(&bytes).unwrap();
    // SAFETY: `load_state::<Old>` returns a box of `Old`.
    let back = unsafe { Box::from_raw(back as *mut Old) };
    assert_eq!(*back, old);
    let e = load_state::<New>(&bytes).unwrap_err();
    assert_eq!(e, "missing field `extra`");
    let e = load_state::<Old>(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(!e.is_empty() && !e.contains("Semantic("), "{e}");
}

#[test]
fn the_stream_keeps_byte_strings_compact() {
    let s = SavedState {
        id: "c".into(),
        instance: 0,
        state: "c".into(),
        schema: 1,
        bytes: Some(vec![200u8; 1000]),
    };
    let mut out = Vec::new();
    encode(&s, &mut out).unwrap();
    assert!(out.len() < 1100, "{} bytes", out.len());
    let back: SavedState = decode(&out).unwrap();
    assert_eq!(back.bytes, s.bytes);
}

/// The new process's reading of its channel (through `fuzzing::read_channel`, what the fuzz
/// target drives): a channel the old process's code wrote reads back; a cut one, one that
/// claims more bytes than any sender would write, and descriptors the stream does not describe
/// are errors, and none of them allocates what a length field claims.
#[test]
fn a_channel_reads_back_and_malformed_ones_are_errors_not_allocations() {
    use super::fuzzing::{read_channel, seed_channel};
    let seed = seed_channel(false).unwrap();
    assert!(read_channel(&seed).is_ok(), "{:?}", read_channel(&seed));
    let cut = read_channel(&seed[..seed.len() - 1]).unwrap_err();
    assert!(cut.contains("the channel ended after"), "{cut}");
    // 2^60 bytes claimed: refused when the bytes do not come, not by failing to allocate.
    let mut huge = vec![0u8, 0];
    huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
    huge.extend_from_slice(b"short");
    let e = read_channel(&huge).unwrap_err();
    assert!(e.contains("after 5 of 1152921504606846976 bytes"), "{e}");
    let mut batch = vec![1u8, 0];
    batch.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let e = read_channel(&batch).unwrap_err();
    assert!(e.contains("receiving a pre-copied batch"), "{e}");
    let named = |names: &[&str]| {
        let mut v = vec![0u8, names.len() as u8];
        for n in names {
            v.push(n.len() as u8);
            v.extend_from_slice(n.as_bytes());
        }
        v.extend_from_slice(&seed[2..]);
        v
    };
    assert!(read_channel(&named(&["K", "L redis"])).is_ok());
    let e = read_channel(&named(&["C 3"])).unwrap_err();
    assert!(
        e.contains("connection `3` came without its description"),
        "{e}"
    );
    let e = read_channel(&named(&["Z"])).unwrap_err();
    assert!(e.contains("an unexpected descriptor named \"Z\""), "{e}");
}

#[test]
fn a_handoff_that_would_need_migrate_is_refused() {
    use crate::package::{Change, Manifest};
    let mut man = Manifest::for_this_toolchain("kv", "5.0.0", "6.0.0");
    assert_eq!(super::engine::no_migration(&man), Ok(()));
    man.changes.push(Change {
        item: "journal::Journal::migrate".into(),
        file: String::new(),
        line: 0,
        category: 5,
        description: "data on disk".into(),
    });
    let err = super::engine::no_migration(&man).unwrap_err();
    assert!(
        err.contains("journal::Journal::migrate") && err.contains("in place first"),
        "{err}"
    );
}
