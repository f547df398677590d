//! Fuzzes the control-socket protocol: `dsu::control::read_request` on whatever a client sends,
//! and `dsu::control::encode_response` on replies carrying arbitrary text.
//!
//! Requests: for any bytes, `read_request` returns (no panic, no hang, no allocation past
//! libFuzzer's `-malloc_limit_mb`) having read at most `MAX_REQUEST` + 1 bytes; it agrees with
//! `decode_request` on the first line; and a request it accepts, encoded as the client
//! (`control::request`) encodes it, decodes to the same request.
//!
//! Replies: a `Response` whose strings and numbers come from the input encodes to exactly one
//! line (one `\n`, at the end) that decodes back to the same reply.

#![no_main]

use std::time::Duration;

use dsu::control::{decode_request, encode_response, read_request, Request, Response, MAX_REQUEST};
use dsu::package::Change;
use dsu::{BusyCall, ComponentStatus, Conversion, Engine, Outcome, Status, UpdateRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_request(data);
    check_response(data);
});

/// The request as the client sends it: compact JSON and a newline.
fn client_line(request: &Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(request).expect("a decoded request encodes to JSON");
    line.push(b'\n');
    line
}

fn check_request(data: &[u8]) {
    let mut conn = std::io::Cursor::new(data);
    let result = read_request(&mut conn);
    assert!(
        conn.position() <= MAX_REQUEST + 1,
        "`read_request` read {} bytes, past the {MAX_REQUEST}-byte limit and the newline",
        conn.position()
    );

    // What `read_request` should have seen: the first line, newline included.
    let first_line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..=end],
        None => data,
    };
    match &result {
        Ok(None) => assert!(
            data.is_empty(),
            "`read_request` saw no request in {} bytes",
            data.len()
        ),
        _ if first_line.len() as u64 > MAX_REQUEST => assert!(
            result.is_err(),
            "`read_request` accepted a {}-byte line, over the {MAX_REQUEST}-byte limit",
            first_line.len()
        ),
        Ok(Some(request)) => {
            let direct = decode_request(first_line).unwrap_or_else(|e| {
                panic!("`read_request` accepted a line `decode_request` refuses: {e}")
            });
            assert_eq!(
                client_line(&direct),
                client_line(request),
                "`read_request` and `decode_request` disagree"
            );
        }
        Err(_) => assert!(
            decode_request(first_line).is_err(),
            "`read_request` refused a line `decode_request` accepts"
        ),
    }

    let Ok(Some(request)) = result else { return };
    let line = client_line(&request);
    let again = decode_request(&line).unwrap_or_else(|e| {
        panic!(
            "a request does not decode after encoding: {e}\nencoded: {}",
            String::from_utf8_lossy(&line)
        )
    });
    assert_eq!(
        String::from_utf8_lossy(&client_line(&again)),
        String::from_utf8_lossy(&line),
        "a request changed in an encode / decode round trip"
    );
}

/// Hands out the input's pieces (split at NUL bytes) as strings, and numbers taken from them.
struct Pieces<'a> {
    parts: std::slice::Split<'a, u8, fn(&u8) -> bool>,
}

impl<'a> Pieces<'a> {
    fn new(data: &'a [u8]) -> Self {
        let is_nul: fn(&u8) -> bool = |&b| b == 0;
        Pieces {
            parts: data.split(is_nul),
        }
    }

    fn bytes(&mut self) -> &'a [u8] {
        self.parts.next().unwrap_or_default()
    }

    fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    fn optional_string(&mut self) -> Option<String> {
        let piece = self.bytes();
        (!piece.is_empty()).then(|| String::from_utf8_lossy(&piece[1..]).into_owned())
    }

    fn number(&mut self) -> u64 {
        let piece = self.bytes();
        let mut le = [0u8; 8];
        let n = piece.len().min(8);
        le[..n].copy_from_slice(&piece[..n]);
        u64::from_le_bytes(le)
    }

    /// A duration in milliseconds, computed as the update manager computes them.
    fn millis(&mut self) -> f64 {
        Duration::from_nanos(self.number()).as_secs_f64() * 1000.0
    }
}

fn record(pieces: &mut Pieces) -> UpdateRecord {
    const OUTCOMES: [Outcome; 6] = [
        Outcome::Committed,
        Outcome::Refused,
        Outcome::Aborted,
        Outcome::GivenUp,
        Outcome::RolledBack,
        Outcome::Staged,
    ];
    UpdateRecord {
        id: pieces.number(),
        from: pieces.string(),
        to: pieces.string(),
        started_unix_ms: pieces.number(),
        outcome: OUTCOMES[(pieces.number() % OUTCOMES.len() as u64) as usize],
        reason: pieces.optional_string(),
        components: vec![pieces.string(), pieces.string()],
        changes: vec![Change {
            item: pieces.string(),
            file: pieces.string(),
            line: pieces.number() as u32,
            category: pieces.number() as u8,
            description: pieces.string(),
        }],
        attempts: pieces.number() as u32,
        policy_wait_ms: pieces.millis(),
        load_ms: pieces.millis(),
        precopy: None,
        prepare_ms: pieces.millis(),
        pause_ms: pieces.millis(),
        transfer_ms: pieces.millis(),
        total_ms: pieces.millis(),
        busy: vec![BusyCall {
            component: pieces.string(),
            method: pieces.optional_string(),
            thread: pieces.string(),
            tid: pieces.number() as i64,
            busy_ms: pieces.millis(),
        }],
        engine: if pieces.number() % 2 == 1 {
            Engine::Handoff
        } else {
            Engine::InPlace
        },
        new_pid: (pieces.number() % 2 == 1).then(|| pieces.number() as u32),
        cleared_poison: (pieces.number() % 2 == 1)
            .then(|| vec![pieces.string()])
            .unwrap_or_default(),
    }
}

fn response(data: &[u8]) -> Response {
    let mut pieces = Pieces::new(data);
    let error = pieces.optional_string();
    let report = (pieces.number() % 2 == 1).then(|| record(&mut pieces));
    let status = (pieces.number() % 2 == 1).then(|| Status {
        program: pieces.string(),
        version: pieces.string(),
        pid: pieces.number() as u32,
        rustc: pieces.string(),
        target: pieces.string(),
        dsu_rt: pieces.string(),
        components: vec![ComponentStatus {
            id: pieces.string(),
            version: pieces.number() as u32,
            instances: pieces.number() as usize,
            in_flight: pieces.number() as usize,
            methods: vec![pieces.string()],
            poisoned: vec![pieces.string()],
            code: pieces.string(),
            state: pieces.string(),
            conversion: (pieces.number() % 2 == 1).then(|| Conversion {
                left: pieces.number(),
                batches: pieces.number(),
                longest_batch_ms: pieces.millis(),
                elapsed_ms: pieces.millis(),
                stopped: pieces.number() % 2 == 1,
            }),
        }],
        staged: vec![pieces.number()],
        history: vec![record(&mut pieces)],
    });
    Response {
        ok: error.is_none(),
        error,
        report,
        status,
    }
}

fn check_response(data: &[u8]) {
    let response = response(data);
    let line = encode_response(&response);
    let text = String::from_utf8_lossy(&line);
    assert_eq!(
        line.iter().position(|&b| b == b'\n'),
        Some(line.len() - 1),
        "a reply is not exactly one line: {text:?}"
    );
    let decoded: Response = serde_json::from_slice(&line)
        .unwrap_or_else(|e| panic!("a reply does not decode: {e}\nreply: {text:?}"));
    assert_eq!(
        String::from_utf8_lossy(&encode_response(&decoded)),
        text,
        "a reply changed in an encode / decode round trip"
    );
}
