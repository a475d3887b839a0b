//! HTTP responses: a status, a few headers and a body, always sent with `Content-Length`.

use std::borrow::Cow;
use std::io::Write;

/// One HTTP/1.1 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code; the reason phrase is derived from it.
    pub status: u16,
    /// Extra headers (Content-Length and Connection are added by [`Response::encode`]).
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body; static for embedded assets so serving them copies nothing until the encode.
    pub body: Cow<'static, [u8]>,
    /// Close the connection after sending (errors, and requests that asked for it).
    pub close: bool,
}

impl Response {
    /// A response with a body of the given type.
    pub fn new(
        status: u16,
        content_type: &'static str,
        body: impl Into<Cow<'static, [u8]>>,
    ) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.into())],
            body: body.into(),
            close: false,
        }
    }

    /// A response with a `text/plain` body that says why.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        let body = match body.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// A response with a JSON body.
    pub fn json(status: u16, body: String) -> Response {
        Response::new(status, "application/json", body.into_bytes())
    }

    /// An error response that also closes the connection (the request could not be trusted).
    pub fn fatal(status: u16, body: &'static str) -> Response {
        Response::text(status, body).closing()
    }

    pub fn with_header(
        mut self,
        name: &'static str,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// Appends the response bytes to `out`; `include_body` is false for HEAD requests.
    pub fn encode(&self, include_body: bool, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if self.status != 101 {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if include_body {
            out.extend_from_slice(&self.body);
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_adds_length_and_close() {
        let mut out = Vec::new();
        Response::fatal(400, "bad request line\n").encode(true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\nConnection: close\r\n\r\nbad request line\n"
        );
    }

    #[test]
    fn head_responses_keep_the_length_but_not_the_body() {
        let mut out = Vec::new();
        Response::text(200, "ok\n").encode(false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn switching_protocols_has_no_content_length() {
        let mut out = Vec::new();
        Response {
            status: 101,
            headers: vec![("Upgrade", "websocket".into())],
            body: Cow::Borrowed(b""),
            close: false,
        }
        .encode(true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        );
    }
}
