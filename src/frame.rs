//! Server-to-client WebSocket frames (RFC 6455 §5.2), encoded once per broadcast.
//!
//! Server frames are never masked, so the bytes of one message are identical for every recipient:
//! the loop encodes a message here once and appends the same bytes to each recipient's output.
//! Client frames are parsed by tungstenite, never here.

/// The longest header a server frame can have: 2 bytes plus a 64-bit length.
pub const MAX_HEADER_LEN: usize = 10;

/// The server's heartbeat: a final Ping with no payload, the same two bytes for everyone.
pub const PING: [u8; 2] = [FIN | OpCode::Ping as u8, 0];

/// The FIN bit: every server frame is a whole message.
const FIN: u8 = 0x80;

/// Close codes of RFC 6455 §7.4.1 that the server sends.
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Frame opcodes the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
}

/// Appends one complete, final, unmasked frame carrying `payload` to `out`.
pub fn encode(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(MAX_HEADER_LEN + payload.len());
    out.push(FIN | opcode as u8);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a Close frame with `code` and a short `reason` (truncated to fit a control frame).
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    const MAX_CONTROL_PAYLOAD: usize = 125;
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload[..2 + end], out);
}

/// The total length (header and payload) of the server frame starting at `bytes[0]`, or `None`
/// when not even the header is there. Only ever applied to frames this module encoded.
pub fn encoded_len(bytes: &[u8]) -> Option<usize> {
    let second = *bytes.get(1)?;
    let (header, payload) = match second & 0x7F {
        126 => (
            4,
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
        ),
        short => (2, short as usize),
    };
    payload.checked_add(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(opcode: OpCode, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode(opcode, &vec![b'x'; len], &mut out);
        out
    }

    #[test]
    fn lengths_use_the_shortest_rfc_form() {
        assert_eq!(&encoded(OpCode::Text, 0)[..2], &[0x81, 0]);
        assert_eq!(&encoded(OpCode::Text, 125)[..2], &[0x81, 125]);
        assert_eq!(&encoded(OpCode::Binary, 126)[..4], &[0x82, 126, 0, 126]);
        assert_eq!(
            &encoded(OpCode::Binary, 65535)[..4],
            &[0x82, 126, 0xFF, 0xFF]
        );
        assert_eq!(
            &encoded(OpCode::Binary, 65536)[..10],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn ping_is_an_empty_final_ping() {
        assert_eq!(PING.to_vec(), encoded(OpCode::Ping, 0));
    }

    #[test]
    fn encoded_len_measures_every_form() {
        for len in [0, 1, 125, 126, 65535, 65536, 100_000] {
            let frame = encoded(OpCode::Text, len);
            assert_eq!(encoded_len(&frame), Some(frame.len()));
        }
        assert_eq!(encoded_len(&[0x81]), None);
        assert_eq!(encoded_len(&[0x81, 126, 0]), None);
        assert_eq!(
            encoded_len(&[0xFF; 10]),
            None,
            "a length that overflows is no frame"
        );
    }

    #[test]
    fn close_frames_carry_code_and_truncated_reason() {
        let mut out = Vec::new();
        encode_close(1008, "slow consumer", &mut out);
        assert_eq!(out[0], 0x88);
        assert_eq!(&out[2..4], &1008u16.to_be_bytes());
        assert_eq!(&out[4..], b"slow consumer");

        out.clear();
        encode_close(1000, &"é".repeat(100), &mut out);
        assert!(out.len() <= 2 + 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
