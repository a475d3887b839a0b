//! Reading one HTTP/1.1 request head with `httparse`.
//!
//! Two phases, as `httparse::Status::Partial` suggests: [`head_end`] cheaply says whether the
//! blank line that ends the head has arrived (scanning only bytes not scanned before, so a request
//! trickling in one byte at a time costs linear time), then [`parse`] builds an owned [`Request`].

use std::borrow::Cow;

/// Most header lines accepted; more is answered like an oversized head (431).
const MAX_HEADERS: usize = 64;

/// An HTTP request head, owned so the connection's read buffer can be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, … as sent (methods are case-sensitive).
    pub method: String,
    /// The path without the query, e.g. `/ws`.
    pub path: String,
    /// The raw query string after `?`, if any.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1: decides the keep-alive default.
    pub minor_version: u8,
    /// Header names and values in arrival order; names compared case-insensitively.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a request head could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Longer than `--max-header-bytes`, or too many header lines (431).
    TooLarge,
    /// Not HTTP/1.x (400), with a short reason for the response body.
    Malformed(&'static str),
}

/// Finds the end of the head (the offset just past the blank line) in `buf`, scanning from
/// `scanned` (how far an earlier call got). Returns the new scan position when not found.
pub fn head_end(buf: &[u8], scanned: usize) -> Result<usize, usize> {
    // Back up so a terminator split across two reads is still seen.
    let start = scanned.saturating_sub(3);
    let mut i = start;
    while let Some(offset) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + offset;
        match buf.get(nl + 1) {
            Some(b'\n') => return Ok(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Ok(nl + 3),
            Some(_) => i = nl + 1,
            None => break,
        }
    }
    Err(buf.len())
}

/// Parses a complete head (`buf` ends at or after the blank line).
pub fn parse(buf: &[u8]) -> Result<(Request, usize), ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(ParseError::Malformed("incomplete request")),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(ParseError::Malformed("unsupported HTTP version"));
        }
        Err(_) => return Err(ParseError::Malformed("malformed request")),
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(ParseError::Malformed("malformed request line"));
    };
    let (target, authority) = split_target(target)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let mut headers: Vec<(String, Vec<u8>)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_owned()))
        .collect();
    if let Some(authority) = authority {
        // RFC 9112 §3.2.2: the target's authority replaces any Host header, so every rule that
        // reads Host (the Origin and rebinding checks) sees the host the request was sent to.
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
        headers.push(("Host".to_owned(), authority.as_bytes().to_vec()));
    }
    let request = Request {
        method: method.to_owned(),
        path: if path.is_empty() { "/" } else { path }.to_owned(),
        query,
        minor_version,
        headers,
    };
    Ok((request, head_len))
}

/// The origin-form part (`/path?query`) of a request target, and its authority when the target
/// is in absolute form (`http://host:port/path?query`, RFC 9112 §3.2.2), which a server must
/// accept: it is routed on its path, and the caller uses the authority as the Host. An empty
/// path stands for `/`.
fn split_target(target: &str) -> Result<(&str, Option<&str>), ParseError> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    let refused = ParseError::Malformed("request target must be a path or an http(s) URL");
    let (scheme, rest) = target.split_once("://").ok_or(refused)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(refused);
    }
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    // RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error.
    if authority.is_empty() || authority.contains('@') {
        return Err(refused);
    }
    Ok((path, Some(authority)))
}

impl Request {
    /// The first header called `name`, if its value is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Every header called `name` joined into one comma-separated list (RFC 9110 §5.3), for
    /// list headers a client or a proxy chain may send several times.
    pub fn header_list(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// How many headers are called `name` (duplicated security headers are refused).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether a comma-separated header such as `Connection: keep-alive, Upgrade` holds `token`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The decoded value of query parameter `name` (`+` is a space, `%XX` a byte).
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        query_param(self.query.as_deref()?, name)
    }

    /// Whether the connection stays open after the response (HTTP/1.1 default, or 1.0 opt-in).
    pub fn keep_alive(&self) -> bool {
        if self.header_has_token("connection", "close") {
            false
        } else {
            self.minor_version >= 1 || self.header_has_token("connection", "keep-alive")
        }
    }

    /// The body length announced by `Content-Length`; an error for a value that is not one
    /// run of decimal digits, or for `Transfer-Encoding`, which wshub does not accept.
    pub fn content_length(&self) -> Result<Option<usize>, &'static str> {
        if self.header_count("transfer-encoding") > 0 {
            return Err("transfer-encoding is not supported; send Content-Length");
        }
        match self.header_count("content-length") {
            0 => Ok(None),
            1 => self
                .header("content-length")
                .and_then(decimal_length)
                .map(Some)
                .ok_or("invalid Content-Length"),
            _ => Err("duplicate Content-Length"),
        }
    }
}

/// A `Content-Length` value: `1*DIGIT` (RFC 9110 §8.6) and nothing else. Rust's integer parse
/// also takes a leading `+`, which a proxy in front may read differently (request smuggling).
fn decimal_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Size limits applied while reading a request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--max-header-bytes`: a longer head is answered 431.
    pub max_head: usize,
    /// `--max-message-size`: a longer body is answered 413.
    pub max_body: usize,
}

/// Accumulates a connection's bytes until a whole request (head and body) is there.
#[derive(Debug, Default)]
pub struct RequestReader {
    /// Bytes received; `buf[start..]` is not yet consumed by a complete request.
    buf: Vec<u8>,
    /// Where the pending request starts. Completed requests only move this; the consumed
    /// front is dropped once per read (in `push`), so a packet of many pipelined requests is
    /// not memmoved once per request.
    start: usize,
    /// How far the search for the end of the head got, so it never rescans.
    scanned: usize,
    /// A parsed head (with its length and body length) waiting for its body; boxed because it
    /// is rare and large, and this reader sits in every connection that is still speaking HTTP.
    head: Option<Box<(Request, usize, usize)>>,
    /// At least one request was complete (the connection is being kept alive).
    served: bool,
    /// `100 Continue` was already asked for the pending head.
    continued: bool,
}

impl RequestReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// True on a keep-alive connection that completed a request and has received nothing of
    /// the next one: timing out then is an idle close, not a failed request.
    pub fn is_between_requests(&self) -> bool {
        self.served && self.buf.len() == self.start
    }

    /// The next complete request and its body, `None` while incomplete, or why the request is
    /// refused (400, 411, 413, 431), which ends the connection.
    pub fn next(&mut self, limits: Limits) -> Result<Option<(Request, Vec<u8>)>, Refused> {
        let pending = &self.buf[self.start..];
        if self.head.is_none() {
            let end = match head_end(pending, self.scanned) {
                Ok(end) => end,
                Err(scanned) => {
                    self.scanned = scanned;
                    return if pending.len() > limits.max_head {
                        Err(too_large())
                    } else {
                        Ok(None)
                    };
                }
            };
            if end > limits.max_head {
                return Err(too_large());
            }
            let (request, head_len) = parse(&pending[..end]).map_err(|error| match error {
                ParseError::TooLarge => too_large(),
                ParseError::Malformed(why) => Refused {
                    status: 400,
                    why,
                    path: None,
                },
            })?;
            let refuse = |status, why| {
                Err(Refused {
                    status,
                    why,
                    path: Some(request.path.clone()),
                })
            };
            let body_len = match request.content_length() {
                Err(why) => return refuse(400, why),
                Ok(None) if request.method == "POST" => {
                    return refuse(411, "POST needs Content-Length");
                }
                Ok(len) => len.unwrap_or(0),
            };
            if body_len > limits.max_body {
                return refuse(413, "request body too large");
            }
            self.head = Some(Box::new((request, head_len, body_len)));
        }
        let Some((_, head_len, body_len)) = self.head.as_deref() else {
            return Ok(None);
        };
        let total = head_len + body_len;
        if pending.len() < total {
            return Ok(None);
        }
        let body = pending[*head_len..total].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.scanned = 0;
        self.served = true;
        self.continued = false;
        Ok(self.head.take().map(|head| (head.0, body)))
    }

    /// True once when the pending head asked `Expect: 100-continue` and its body has not
    /// arrived: the client waits for `100 Continue` before sending it (curl does for big POSTs).
    pub fn take_continue(&mut self) -> bool {
        let expects = self
            .head
            .as_deref()
            .is_some_and(|(request, _, _)| request.header_has_token("expect", "100-continue"));
        let send = expects && !self.continued;
        self.continued |= send;
        send
    }

    /// Bytes received after the last complete request (e.g. the first WebSocket frame that
    /// arrived in the same packet as the upgrade).
    pub fn take_rest(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        rest.drain(..std::mem::take(&mut self.start));
        rest
    }
}

/// Why a request was refused before it could be routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status to answer with.
    pub status: u16,
    /// A short reason for the body.
    pub why: &'static str,
    /// The request's path when the head could be read (the API answers errors in JSON).
    pub path: Option<String>,
}

fn too_large() -> Refused {
    Refused {
        status: 431,
        why: "request head too large",
        path: None,
    }
}

/// The decoded value of parameter `name` in a raw query string.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key)? == name).then_some(value)
        })
        .next()
        .and_then(percent_decode)
}

/// Decodes `%XX` escapes and `+`; `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains(['%', '+']) {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws?user=al%20ice&x HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn head_end_is_found_when_fed_one_byte_at_a_time() {
        let mut scanned = 0;
        for len in 1..=UPGRADE.len() {
            match head_end(&UPGRADE[..len], scanned) {
                Ok(end) => {
                    assert_eq!((len, end), (UPGRADE.len(), UPGRADE.len()));
                    return;
                }
                Err(next) => scanned = next,
            }
        }
        panic!("end of head never found");
    }

    #[test]
    fn head_end_accepts_bare_newlines_and_ignores_following_bytes() {
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n\x81\x85", 0), Ok(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), Err(25));
    }

    #[test]
    fn parse_reads_path_query_and_headers() {
        let (request, len) = parse(UPGRADE).unwrap();
        assert_eq!(len, UPGRADE.len());
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/ws");
        assert_eq!(request.query_param("user").as_deref(), Some("al ice"));
        assert_eq!(request.query_param("x").as_deref(), Some(""));
        assert_eq!(request.query_param("missing"), None);
        assert_eq!(request.header("HOST"), Some("example.com"));
        assert!(request.header_has_token("connection", "upgrade"));
        let proxied = parse(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\r\n").unwrap().0;
        assert_eq!(
            proxied.header_list("x-forwarded-for").as_deref(),
            Some("1.1.1.1, 2.2.2.2, 3.3.3.3")
        );
        assert_eq!(proxied.header_list("x-real-ip"), None);
        assert!(request.keep_alive());
    }

    #[test]
    fn absolute_form_targets_are_routed_on_their_path_and_their_authority_is_the_host() {
        let (request, _) =
            parse(b"GET http://127.0.0.1:8080/ws?user=a HTTP/1.1\r\nHost: evil.example\r\nhost: x\r\n\r\n")
                .unwrap();
        assert_eq!(request.path, "/ws");
        assert_eq!(request.query.as_deref(), Some("user=a"));
        assert_eq!(request.header("host"), Some("127.0.0.1:8080"));
        assert_eq!(request.header_count("host"), 1);
        for (head, path, query) in [
            (&b"GET HTTPS://a.example HTTP/1.1\r\n\r\n"[..], "/", None),
            (
                b"GET http://a.example?x=1 HTTP/1.1\r\n\r\n",
                "/",
                Some("x=1"),
            ),
            (
                b"GET http://[::1]:80/healthz HTTP/1.1\r\n\r\n",
                "/healthz",
                None,
            ),
        ] {
            let request = parse(head).unwrap().0;
            assert_eq!(
                (request.path.as_str(), request.query.as_deref()),
                (path, query)
            );
            assert_eq!(request.header_count("host"), 1);
        }
    }

    #[test]
    fn parse_refuses_garbage_and_targets_that_are_neither_paths_nor_http_urls() {
        assert_eq!(
            parse(b"\x16\x03\x01\x02\r\n\r\n"),
            Err(ParseError::Malformed("malformed request"))
        );
        for head in [
            &b"GET ftp://x/ HTTP/1.1\r\n\r\n"[..],
            b"GET http:///path HTTP/1.1\r\n\r\n",
            b"GET http://user@x/ HTTP/1.1\r\n\r\n",
            b"GET x/y HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(head), Err(ParseError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        assert!(matches!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(parse(&head), Err(ParseError::TooLarge));
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let http10 = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().0;
        assert!(!http10.keep_alive());
        let close = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .0;
        assert!(!close.keep_alive());
    }

    #[test]
    fn content_length_must_be_single_and_numeric() {
        let ok = parse(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")
            .unwrap()
            .0;
        assert_eq!(ok.content_length(), Ok(Some(12)));
        let dup = parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .0;
        assert!(dup.content_length().is_err());
        let chunked = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .0;
        assert!(chunked.content_length().is_err());
        for junk in [
            "-5",
            "+13",
            "0x10",
            " 1 3",
            "1 3",
            "",
            "1_0",
            "١",
            "99999999999999999999999",
        ] {
            let head = format!("POST / HTTP/1.1\r\nContent-Length: {junk}\r\n\r\n");
            let request = parse(head.as_bytes()).unwrap().0;
            assert_eq!(
                request.content_length(),
                Err("invalid Content-Length"),
                "{junk:?}"
            );
        }
        let padded = parse(b"POST / HTTP/1.1\r\nContent-Length:  007 \r\n\r\n")
            .unwrap()
            .0;
        assert_eq!(padded.content_length(), Ok(Some(7)));
    }

    const LIMITS: Limits = Limits {
        max_head: 256,
        max_body: 16,
    };

    #[test]
    fn reader_returns_pipelined_requests_with_bodies_in_order() {
        let mut reader = RequestReader::default();
        reader.push(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n\x81");
        let (first, body) = reader.next(LIMITS).unwrap().unwrap();
        assert_eq!((first.path.as_str(), body.as_slice()), ("/a", &b"abc"[..]));
        let (second, body) = reader.next(LIMITS).unwrap().unwrap();
        assert_eq!((second.path.as_str(), body.len()), ("/b", 0));
        assert_eq!(reader.next(LIMITS).unwrap(), None);
        assert_eq!(reader.take_rest(), b"\x81");
    }

    #[test]
    fn reader_asks_for_the_body_once_when_the_client_expects_100_continue() {
        let mut reader = RequestReader::default();
        reader.push(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(reader.next(LIMITS).unwrap(), None);
        assert!(reader.take_continue());
        assert!(!reader.take_continue());
        reader.push(b"ok");
        assert_eq!(reader.next(LIMITS).unwrap().unwrap().1, b"ok");
        assert!(!reader.take_continue());
    }

    #[test]
    fn reader_waits_for_the_whole_body() {
        let mut reader = RequestReader::default();
        reader.push(b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nab");
        assert_eq!(reader.next(LIMITS).unwrap(), None);
        reader.push(b"cd");
        assert_eq!(reader.next(LIMITS).unwrap().unwrap().1, b"abcd");
    }

    #[test]
    fn reader_refuses_what_breaks_the_limits() {
        let status = |bytes: &[u8]| {
            let mut reader = RequestReader::default();
            reader.push(bytes);
            reader.next(LIMITS).unwrap_err().status
        };
        assert_eq!(status(&[b'a'; 300]), 431);
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(300)).as_bytes()),
            431
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n"),
            413
        );
        assert_eq!(status(b"POST / HTTP/1.1\r\n\r\n"), 411);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(status(b"BAD\r\n\r\n"), 400);
    }

    #[test]
    fn percent_decoding_refuses_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
