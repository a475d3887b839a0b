//! RESP2 on the wire, through `redis-protocol`: commands encoded as arrays of bulk strings,
//! replies decoded one frame at a time from whatever bytes have arrived.

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame;

pub use redis_protocol::resp2::types::OwnedFrame as Reply;

/// Appends the command `args` (name first) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame> = args
        .iter()
        .map(|arg| BorrowedFrame::BulkString(arg))
        .collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by the codec itself, so encoding cannot run short.
    let written = encode_borrowed(&mut out[start..], &frame, false).unwrap_or(0);
    out.truncate(start + written);
}

/// Deepest nesting of arrays accepted in a reply: ours nest at most twice. The codec decodes
/// recursively, so a deeper reply (`*1\r\n` a hundred thousand times) would overflow the stack.
const MAX_DEPTH: usize = 4;

/// The first complete reply in `input` and how many bytes it took; `Ok(None)` while it is
/// incomplete. An error means the bytes are not RESP: the connection is unusable.
pub fn decode_one(input: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(len) = frame_len(input)? else {
        return Ok(None);
    };
    decode(&input[..len]).map_err(|e| e.to_string())
}

/// How long the first reply in `input` is, once all of it arrived: a scan without recursion
/// or allocation that bounds the nesting, so the codec only ever sees a complete, shallow
/// frame (and a large reply arriving in pieces is decoded once, not at every piece).
fn frame_len(input: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    // Elements still to read at each open array.
    let mut open: Vec<i64> = Vec::new();
    loop {
        let Some(&kind) = input.get(at) else {
            return Ok(None);
        };
        let Some(end) = input[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &input[at + 1..at + end];
        at += end + 2;
        let number = || -> Result<i64, String> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| "a bad length in a reply".to_string())
        };
        match kind {
            b'+' | b'-' | b':' => {}
            b'$' => {
                let len = number()?;
                if len >= 0 {
                    let len = usize::try_from(len).map_err(|_| "a bad length in a reply")?;
                    if input.len() < at.saturating_add(len).saturating_add(2) {
                        return Ok(None);
                    }
                    at += len + 2;
                }
            }
            b'*' => {
                let count = number()?;
                if count > 0 {
                    if open.len() == MAX_DEPTH {
                        return Err("a reply nested too deep".into());
                    }
                    open.push(count);
                    continue;
                }
            }
            _ => return Err("an unknown reply type".into()),
        }
        // One element is complete: close every array it completes.
        loop {
            match open.last_mut() {
                None => return Ok(Some(at)),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

/// The bytes of a simple or bulk string reply.
pub fn bytes(reply: &Reply) -> Option<&[u8]> {
    match reply {
        Reply::SimpleString(bytes) | Reply::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// An integer reply (or a string holding one, as Lua numbers can come back).
pub fn integer(reply: &Reply) -> Option<i64> {
    match reply {
        Reply::Integer(n) => Some(*n),
        other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = b"x".to_vec();
        encode(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(out, b"x*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn replies_decode_one_at_a_time_and_wait_for_the_rest() {
        let input = b":3\r\n$5\r\nhel";
        let (reply, used) = decode_one(input).unwrap().unwrap();
        assert_eq!((integer(&reply), used), (Some(3), 4));
        assert_eq!(decode_one(&input[4..]).unwrap(), None);
        assert!(decode_one(b"?garbage\r\n").is_err());
    }

    #[test]
    fn nested_and_pipelined_replies_are_measured_before_decoding() {
        let push = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n:1\r\n";
        assert_eq!(frame_len(push), Ok(Some(push.len() - 4)));
        for cut in 0..push.len() - 4 {
            assert_eq!(frame_len(&push[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(frame_len(b"*2\r\n*0\r\n$-1\r\n+x"), Ok(Some(13)));
        assert!(frame_len(&b"*1\r\n".repeat(100_000)).is_err());
        assert!(frame_len(b"$x\r\n").is_err());
        assert!(decode_one(b"$999999999999999999\r\nxx").unwrap().is_none());
    }
}
