//! RESP framing: requests (arrays of bulk strings, or inline commands) and replies.

/// Parses one request from `input`: `Ok(Some((args, consumed)))`, `Ok(None)` when more bytes are
/// needed, `Err` on a protocol error.
pub fn parse(input: &[u8]) -> Result<Option<(Vec<Vec<u8>>, usize)>, String> {
    if input.is_empty() {
        return Ok(None);
    }
    if input[0] != b'*' {
        // An inline command: one line of words.
        let Some(end) = find_crlf(input, 0) else { return Ok(None) };
        let words = input[..end]
            .split(|b| *b == b' ')
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        return Ok(Some((words, end + 2)));
    }
    let Some(end) = find_crlf(input, 1) else { return Ok(None) };
    let n: usize = number(&input[1..end])?;
    let mut pos = end + 2;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        if pos >= input.len() {
            return Ok(None);
        }
        if input[pos] != b'$' {
            return Err(format!("expected '$', got '{}'", input[pos] as char));
        }
        let Some(end) = find_crlf(input, pos + 1) else { return Ok(None) };
        let len: usize = number(&input[pos + 1..end])?;
        let start = end + 2;
        if input.len() < start + len + 2 {
            return Ok(None);
        }
        args.push(input[start..start + len].to_vec());
        pos = start + len + 2;
    }
    Ok(Some((args, pos)))
}

fn number(b: &[u8]) -> Result<usize, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "invalid length".to_string())
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| p + from)
}

pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(format!("+{s}\r\n").as_bytes());
}

pub fn error(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(format!("-{s}\r\n").as_bytes());
}

pub fn int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(format!(":{n}\r\n").as_bytes());
}

pub fn bulk(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(v) => {
            out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
}

pub fn array_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(format!("*{n}\r\n").as_bytes());
}
