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

/// The first complete reply in `input` and how many bytes it took; `Ok(None)` while it is
/// incomplete. An error means the bytes are not RESP: the connection is unusable.
pub fn decode_one(input: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    decode(input).map_err(|e| e.to_string())
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
}
