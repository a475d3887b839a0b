//! WebSocket frames as a client sees them (RFC 6455 §5): decoding the server's unmasked frames
//! in place, without allocating. Client frames are encoded by `wire::encode_masked`.

use std::fmt;

/// A frame longer than this is taken for a broken stream rather than buffered.
const MAX_PAYLOAD: u64 = 256 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }
}

/// One decoded frame, borrowing its payload from the read buffer.
pub struct Frame<'a> {
    /// Set on the last frame of a message; gorilla fragments messages at its write buffer size.
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: &'a [u8],
}

pub enum Decoded<'a> {
    /// A whole frame and the number of input bytes it took.
    Frame { frame: Frame<'a>, len: usize },
    /// The input ends inside a frame.
    Incomplete,
}

#[derive(Debug)]
pub enum FrameError {
    /// Servers must not mask (RFC 6455 §5.1).
    Masked,
    UnknownOpcode(u8),
    TooLarge(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Masked => write!(f, "server sent a masked frame"),
            Self::UnknownOpcode(bits) => write!(f, "server sent unknown opcode {bits:#x}"),
            Self::TooLarge(len) => write!(f, "server sent a {len}-byte frame"),
        }
    }
}

/// Decodes the frame at the start of `input`.
pub fn decode(input: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let [first, second, ..] = *input else {
        return Ok(Decoded::Incomplete);
    };
    if second & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(FrameError::UnknownOpcode(first & 0x0F))?;
    let (header_len, payload_len) = match second & 0x7F {
        126 => (
            4,
            input
                .get(2..4)
                .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        ),
        127 => (
            10,
            input
                .get(2..10)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes"))),
        ),
        len => (2, Some(u64::from(len))),
    };
    let Some(payload_len) = payload_len else {
        return Ok(Decoded::Incomplete);
    };
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload_len));
    }
    let len = header_len + payload_len as usize;
    if input.len() < len {
        return Ok(Decoded::Incomplete);
    }
    Ok(Decoded::Frame {
        frame: Frame {
            fin: first & 0x80 != 0,
            opcode,
            payload: &input[header_len..len],
        },
        len,
    })
}
