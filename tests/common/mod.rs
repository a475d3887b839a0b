//! Shared helpers for the integration tests: a real server on a free port, real sockets.
//!
//! Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

pub mod history;
pub mod redis;
pub mod wire;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;
use tungstenite::{Message, Utf8Bytes};
use wshub::{Config, Server};

/// How long a test waits for anything before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A WebSocket client over a blocking socket with a read timeout.
pub type Client = WebSocket<TcpStream>;

/// Starts a server in this process (on its own thread) with `args` on top of `--listen
/// 127.0.0.1:0`; returns its address. The server runs until the test process exits.
pub fn start(args: &[&str]) -> SocketAddr {
    let mut argv = vec!["wshub", "--listen", "127.0.0.1:0", "--log-level", "warn"];
    argv.extend_from_slice(args);
    let config = Config::load_from(argv).expect("valid test configuration");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let server = Server::bind(config).expect("bind test server");
        tx.send(server.local_addr()).expect("report address");
        server.run().expect("server loop");
    });
    rx.recv_timeout(TIMEOUT).expect("server started")
}

/// The real `wshub` binary, started with `args` on a free port; its stderr is kept line by line
/// for tests that assert on logs. `--log-level info` is added unless `args` set a level.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn spawn(args: &[&str]) -> Daemon {
        let level: &[&str] = if args.contains(&"--log-level") {
            &[]
        } else {
            &["--log-level", "info"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
            .args(["--listen", "127.0.0.1:0"])
            .args(level)
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn wshub");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        let (tx, rx) = mpsc::channel();
        // Reads until the daemon exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        let addr = rx
            .recv_timeout(TIMEOUT)
            .expect("daemon printed its address");
        Daemon {
            child,
            addr: addr.parse().expect("socket address"),
            log,
        }
    }

    /// Everything logged so far, one line each.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits until a logged line contains `needle` and returns that line.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .find(|line| line.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line contains {needle:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to the child we spawned.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a WebSocket to `path` (with query) on `addr`.
pub fn connect(addr: SocketAddr, path: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let url = format!("ws://{addr}{path}");
    let (client, response) =
        tungstenite::client::client(url.as_str(), stream).expect("websocket handshake");
    assert_eq!(response.status(), 101);
    client
}

/// Reads the next data message (text or binary), skipping pings and pongs.
pub fn next_message(client: &mut Client) -> Message {
    loop {
        match client.read().expect("read message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            message => return message,
        }
    }
}

/// Reads the next text message.
pub fn next_text(client: &mut Client) -> String {
    match next_message(client) {
        Message::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Reads the next text message as JSON.
pub fn next_json(client: &mut Client) -> serde_json::Value {
    serde_json::from_str(&next_text(client)).expect("JSON message")
}

/// Sends a text message.
pub fn send_text(client: &mut Client, text: &str) {
    client
        .send(Message::Text(Utf8Bytes::from(text)))
        .expect("send text");
}

/// Sends `request` on a fresh TCP connection and returns everything the server sends back
/// until it closes the connection (or the timeout).
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream.write_all(request).expect("send request");
    read_until_close(&mut stream)
}

/// Reads until EOF, a reset or the timeout; returns what arrived as (lossy) text.
pub fn read_until_close(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// Sends one request on a keep-alive-capable connection and reads exactly one response
/// (head plus `Content-Length` body).
pub fn http_request(stream: &mut TcpStream, request: &str) -> (u16, String, String) {
    stream.write_all(request.as_bytes()).expect("send request");
    let head = read_head(stream);
    let status = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().expect("length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// `GET path` on a fresh connection: status, head and body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    http_request(
        &mut stream,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
}

/// A valid upgrade request head for `path` on `addr`, with `extra` header lines.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    wire::upgrade_request(&addr.to_string(), path, extra)
}

/// A masked client frame with `first` as the first byte (FIN, RSV and opcode).
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + payload.len());
    wire::encode_masked(first, payload, [0x37, 0xfa, 0x21, 0x3d], &mut out);
    out
}

/// Polls `condition` until it holds or the timeout passes.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one unlabelled series in `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, _, body) = get(addr, "/metrics");
    body.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {name} in\n{body}"))
        .parse()
        .expect("numeric metric")
}

/// Reads one HTTP response head, byte by byte so that nothing after it (a first frame, the next
/// response) is consumed.
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read response head");
        assert!(
            n > 0,
            "connection closed inside the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ASCII head")
}

/// Opens a WebSocket on a plain socket (the RFC sample key), checks the `101`, and returns the
/// stream positioned at the first server frame, for tests that speak frames byte by byte.
pub fn raw_websocket(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = tcp_connect(addr);
    stream
        .write_all(upgrade_request(addr, path, "").as_bytes())
        .expect("send upgrade");
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "expected 101, got {head:?}"
    );
    stream
}

/// Reads one server frame: its first byte (FIN, RSV, opcode) and its payload. Server frames
/// must never be masked.
pub fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).expect("read frame header");
    assert_eq!(header[1] & 0x80, 0, "server frames must not be masked");
    let len = match header[1] & 0x7F {
        126 => {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).expect("read 16-bit length");
            u64::from(u16::from_be_bytes(len))
        }
        127 => {
            let mut len = [0u8; 8];
            stream.read_exact(&mut len).expect("read 64-bit length");
            u64::from_be_bytes(len)
        }
        short => u64::from(short),
    };
    let mut payload = vec![0u8; usize::try_from(len).expect("frame fits in memory")];
    stream.read_exact(&mut payload).expect("read frame payload");
    (header[0], payload)
}

/// Reads frames until the server's Close (skipping pings), checks that the server then ends
/// the TCP connection, and returns the close code.
pub fn read_close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (first, payload) = read_frame(stream);
        match first {
            0x89 => continue,
            0x88 => {
                assert!(
                    payload.len() >= 2,
                    "close frame without a code: {payload:?}"
                );
                assert_closed(stream);
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
            other => panic!(
                "expected a close frame, got first byte {other:#04x} with {} bytes",
                payload.len()
            ),
        }
    }
}

/// Asserts the peer ends the connection (EOF or reset) before the timeout, discarding any bytes.
pub fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

/// Reads messages on a tungstenite client until the server's Close (skipping pings and pongs)
/// and returns its code.
pub fn close_code(client: &mut Client) -> u16 {
    loop {
        match client.read().expect("read until close") {
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(Some(frame)) => return frame.code.into(),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

// ---- external programs (tests/clients.rs, tests/nginx.rs) ----

/// Finds an external program for an interoperability test: `$env_var` if set, else the first
/// of `candidates` that runs (`--version` or `-v` answers). When it is missing the test cannot
/// run: on CI (`CI=true`) that is a failure that says how to install it; elsewhere the caller
/// prints why it skips and returns.
pub fn external_program(
    env_var: &str,
    candidates: &[&str],
    install_hint: &str,
) -> Option<std::path::PathBuf> {
    let chosen: Vec<String> = match std::env::var(env_var) {
        Ok(value) if !value.is_empty() => vec![value],
        _ => candidates.iter().map(|c| (*c).to_owned()).collect(),
    };
    let found = chosen.iter().find(|program| {
        ["--version", "-v"].iter().any(|flag| {
            Command::new(program)
                .arg(flag)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
    });
    match found {
        Some(program) => Some(std::path::PathBuf::from(program)),
        None => {
            missing_dependency(
                &format!(
                    "{} (tried {chosen:?}; set {env_var})",
                    candidates.join(" or ")
                ),
                install_hint,
            );
            None
        }
    }
}

/// Reports a missing test dependency: panics on CI (`CI=true`), otherwise prints a
/// `skipping: …` line for the caller to return after.
pub fn missing_dependency(what: &str, install_hint: &str) {
    let message = format!("{what} is not available; install it with: {install_hint}");
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("CI=true and {message}");
    }
    eprintln!("skipping: {message}");
}

/// The output of a finished external program.
pub struct ProgramOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion (killing it after `within`), capturing stdout and stderr.
pub fn run_program(mut command: Command, within: Duration) -> ProgramOutput {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = ProgramOutput {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "{command:?} did not finish within {within:?}\nstdout:\n{}\nstderr:\n{}",
        output.stdout,
        output.stderr
    );
    output
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot bind port 0
/// and report it back, such as nginx).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// A server frame carrying `payload`, encoded as the server must: final, unmasked, shortest
/// length form. `first` is the first byte (FIN and opcode).
pub fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

// ---- events protocol and auth (tests/events.rs, tests/auth_api.rs) ----

/// Opens a WebSocket with a hand-written upgrade request for `path` carrying the `extra` header
/// lines (tokens, subprotocols, Origin); asserts the `101` and returns its head and the client.
pub fn connect_with_headers(addr: SocketAddr, path: &str, extra: &str) -> (String, Client) {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
        .write_all(upgrade_request(addr, path, extra).as_bytes())
        .expect("send upgrade");
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "expected 101, got {head:?}"
    );
    let client = WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None);
    (head, client)
}

/// Sends `request` and returns the next JSON message (the reply, when nothing else is pending).
pub fn request_json(client: &mut Client, request: &str) -> serde_json::Value {
    send_text(client, request);
    next_json(client)
}

/// Asserts nothing is queued for `client`: a ping sent now must be answered by the very next
/// message. The loop handles one client's frames in order, so whatever an earlier action
/// queued for this client would arrive before the reply.
pub fn assert_nothing_pending(client: &mut Client) {
    let reply = request_json(client, r#"{"event":"ping","id":"nothing-pending"}"#);
    assert_eq!(
        reply["event"], "ping",
        "expected nothing before the ping reply, got {reply}"
    );
    assert_eq!(reply["id"], "nothing-pending", "{reply}");
}

/// Closes `client` with the close handshake and waits for the server's Close, so the server has
/// processed the close (and left the hub) when this returns.
pub fn close_handshake(client: &mut Client) {
    client.close(None).expect("send close");
    loop {
        match client.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => return,
            Ok(_) => continue,
            Err(e) => panic!("expected the server's close, got {e}"),
        }
    }
}

/// A plain TCP connection to `addr` with the tests' read timeout.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
}

/// Unix time in seconds, for token claims.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Asserts that `user` is a generated anonymous id: `anon-` and at least 8 random letters or
/// digits (SPEC §4).
pub fn assert_anonymous_id(user: &str) {
    let random = user
        .strip_prefix("anon-")
        .unwrap_or_else(|| panic!("{user} is not anon-<random>"));
    assert!(
        random.len() >= 8 && random.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{user}: not anon- and at least 8 random letters or digits"
    );
}
