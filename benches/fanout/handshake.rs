//! The client side of the WebSocket upgrade (RFC 6455 §4.1): the response, parsed with
//! `httparse` in two phases (incomplete, then complete). The request is `wire::upgrade_request`.

use std::fmt;

/// A response head longer than this is not an upgrade answer worth waiting for.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Headers a 101 answer may carry; more than this makes `httparse` fail.
const MAX_HEADERS: usize = 32;

pub enum Response {
    /// The head has not fully arrived yet.
    Incomplete,
    /// `101 Switching Protocols`; frames start after `head_len` bytes.
    Upgraded { head_len: usize },
}

#[derive(Debug)]
pub enum HandshakeError {
    Status(u16),
    Malformed(httparse::Error),
    TooLong,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(code) => write!(f, "upgrade refused with HTTP {code}"),
            Self::Malformed(err) => write!(f, "malformed upgrade response: {err}"),
            Self::TooLong => write!(f, "upgrade response head over {MAX_RESPONSE_HEAD} bytes"),
        }
    }
}

pub fn parse_response(input: &[u8]) -> Result<Response, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(input).map_err(HandshakeError::Malformed)? {
        httparse::Status::Partial if input.len() > MAX_RESPONSE_HEAD => {
            Err(HandshakeError::TooLong)
        }
        httparse::Status::Partial => Ok(Response::Incomplete),
        httparse::Status::Complete(head_len) => match response.code {
            Some(101) => Ok(Response::Upgraded { head_len }),
            code => Err(HandshakeError::Status(code.unwrap_or(0))),
        },
    }
}
