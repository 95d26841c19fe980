//! The event payload every target carries, and the receiver's minimal parser.
//!
//! All targets get the same bytes: a JSON object `{"s":<seq>,"t":<nanos>,"p":"xx…"}`
//! padded with `x` to exactly `--size` bytes. `s` is the run-wide sequence number,
//! `t` the publish time (`SystemTime` nanoseconds; publisher and receivers run on
//! the same machine, so the clocks agree). JSON because Herald passes JSON
//! payloads through untouched and Socket.IO carries it as a string; the padding
//! keeps the size honest.
//!
//! Receivers must not spend their time decoding what the servers send, or the
//! bench measures itself: [`find`] scans for the `{"s":` marker (or its
//! JSON-escaped form inside a Socket.IO string) and reads two integers, nothing
//! else, wherever the target put the payload in its frame.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The smallest payload that fits the header with the largest numbers.
pub const MIN_SIZE: usize = r#"{"s":18446744073709551615,"t":18446744073709551615,"p":""}"#.len();

/// Builds the payload for event `seq` stamped `t_ns`, padded to `size` bytes
/// (or just the header, if `size` is smaller than that).
pub fn encode(seq: u64, t_ns: u64, size: usize) -> String {
    let mut s = String::with_capacity(size.max(MIN_SIZE));
    s.push_str(r#"{"s":"#);
    s.push_str(&seq.to_string());
    s.push_str(r#","t":"#);
    s.push_str(&t_ns.to_string());
    s.push_str(r#","p":""#);
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Finds a payload in `frame` and returns `(seq, t_ns)`. Accepts the plain
/// form and the JSON-escaped form (`{\"s\":1,\"t\":2,…`).
pub fn find(frame: &[u8]) -> Option<(u64, u64)> {
    let (start, escaped) = match memfind(frame, br#"{"s":"#) {
        Some(i) => (i + 5, false),
        None => (memfind(frame, br#"{\"s\":"#)? + 7, true),
    };
    let (seq, rest) = number(&frame[start..])?;
    let sep: &[u8] = if escaped { br#",\"t\":"# } else { br#","t":"# };
    let rest = rest.strip_prefix(sep)?;
    let (t, _) = number(rest)?;
    Some((seq, t))
}

fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in &b[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some((n, &b[digits..]))
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_parses_back() {
        let p = encode(42, 1_700_000_000_123_456_789, 1024);
        assert_eq!(p.len(), 1024);
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        assert_eq!(find(p.as_bytes()), Some((42, 1_700_000_000_123_456_789)));
    }

    #[test]
    fn payload_is_found_inside_a_herald_frame() {
        let p = encode(7, 99, 100);
        let frame =
            format!(r#"{{"type":"event","room":"bench:r0","event":"b","seq":3,"data":{p}}}"#);
        assert_eq!(find(frame.as_bytes()), Some((7, 99)));
    }

    #[test]
    fn payload_is_found_json_escaped_inside_a_socketio_frame() {
        let p = encode(8, 1234, 80);
        let frame = serde_json::to_string(&("e", &p)).map(|a| format!("42{a}"));
        assert_eq!(find(frame.unwrap_or_default().as_bytes()), Some((8, 1234)));
    }

    #[test]
    fn small_sizes_still_give_a_valid_payload() {
        let p = encode(1, 2, 0);
        assert_eq!(find(p.as_bytes()), Some((1, 2)));
    }
}
