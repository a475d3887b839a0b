//! The client's side of the wire, written once for every test and for the bench harness: the
//! upgrade request and masked client frames (RFC 6455 §4.1, §5.2, §5.3).
//!
//! The integration tests reach it as `common::wire`; the unit tests of `src/session.rs` and the
//! bench harness include this file by path, so there is exactly one client frame encoder.

/// The sample key of RFC 6455 §1.3: servers answer any valid key, so one fixed key will do.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A valid upgrade request head for `path` on `host`, with `extra` header lines (each ending in
/// `\r\n`) before the blank line.
pub fn upgrade_request(host: &str, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Appends one masked client frame to `out`: `first` is its first byte (FIN, RSV and opcode,
/// so tests can also write frames a server must refuse), the length takes its shortest form.
pub fn encode_masked(first: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    const MASKED: u8 = 0x80;
    out.push(first);
    match payload.len() {
        len @ 0..=125 => out.push(MASKED | len as u8),
        len @ 126..=0xFFFF => {
            out.push(MASKED | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(MASKED | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}
