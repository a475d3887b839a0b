//! A real `redis-server` for the cluster tests (SPEC §10), and wshub instances joined through it.
//!
//! Redis comes from `WSHUB_REDIS_SERVER` (default `redis-server`, then `/usr/bin/redis-server`);
//! without it the cluster tests skip, or fail when `CI=true`. Each test starts its own Redis on a
//! free port with nothing persisted, so killing it and restarting it on the same port loses every
//! key, as a real restart without persistence would.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use super::{
    Client, Daemon, TIMEOUT, connect, external_program, free_port, get, http_request, next_json,
    request_json, run_program, tcp_connect,
};

/// Free ports tried before giving up on starting Redis (another process may take the port
/// between `free_port` and Redis binding it).
const PORT_ATTEMPTS: usize = 5;

/// One `redis-server` process on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    program: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Everything Redis printed, for failure messages.
    log: Arc<Mutex<String>>,
}

impl RedisServer {
    /// Starts Redis on a free port, or returns `None` (after saying why) when `redis-server` is
    /// missing outside CI.
    pub fn start() -> Option<RedisServer> {
        let program = Self::program()?;
        for _ in 0..PORT_ATTEMPTS {
            let mut redis = RedisServer::new(program.clone(), free_port());
            if redis.try_start().is_ok() {
                return Some(redis);
            }
        }
        panic!("redis-server did not start on any of {PORT_ATTEMPTS} free ports");
    }

    /// Starts Redis on `port` (for a Redis that appears where an instance already looks for it).
    pub fn start_at(port: u16) -> Option<RedisServer> {
        let mut redis = RedisServer::new(Self::program()?, port);
        if let Err(why) = redis.try_start() {
            panic!("redis-server did not start on port {port}: {why}");
        }
        Some(redis)
    }

    /// The `redis-server` to run, or `None` outside CI when there is none.
    pub fn program() -> Option<PathBuf> {
        external_program(
            "WSHUB_REDIS_SERVER",
            &["redis-server", "/usr/bin/redis-server"],
            "apt-get install redis-server (or: sudo bash scripts/test-deps.sh)",
        )
    }

    fn new(program: PathBuf, port: u16) -> RedisServer {
        RedisServer {
            program,
            port,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// What Redis printed so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("redis log lock").clone()
    }

    /// Kills Redis with SIGKILL (no shutdown, no save) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills Redis if it runs, then starts a fresh one on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.try_start() {
            panic!("redis-server did not restart on port {}: {why}", self.port);
        }
    }

    /// Spawns Redis and waits until it answers PING; on failure it is killed and the reason
    /// (with its output) returned.
    fn try_start(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.program)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", self.program.display()));
        let stdout = child.stdout.take().expect("redis stdout");
        let log = Arc::clone(&self.log);
        // Reads until Redis exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut log = log.lock().expect("redis log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.ping() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().expect("try_wait"));
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("it exited with {status}; output:\n{}", self.log()));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "no PONG within {TIMEOUT:?}; output:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether something on the port answers PING with `+PONG`.
    pub fn ping(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).is_ok() && line == "+PONG\r\n"
    }

    /// Sends one command and returns its raw RESP reply, e.g. `"+OK\r\n"` or
    /// `"*1\r\n$5\r\nlobby\r\n"`.
    pub fn command(&self, args: &[&str]) -> String {
        let mut raw = Vec::new();
        self.query(args, &mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Sends one command and returns its reply, parsed.
    pub fn reply(&self, args: &[&str]) -> Reply {
        self.query(args, &mut Vec::new())
    }

    fn query(&self, args: &[&str], raw: &mut Vec<u8>) -> Reply {
        let mut stream = tcp_connect(SocketAddr::from(([127, 0, 0, 1], self.port)));
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("send {args:?} to Redis: {e}"));
        read_reply(&mut BufReader::new(stream), raw)
    }

    /// Deletes every key of every database.
    pub fn flushall(&self) {
        assert_eq!(self.command(&["FLUSHALL"]), "+OK\r\n");
    }

    /// The channels with at least one subscriber whose names match the glob `pattern`.
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        self.reply(&["PUBSUB", "CHANNELS", pattern]).strings()
    }

    /// How many subscribers `channel` has (pattern subscriptions aside).
    pub fn numsub(&self, channel: &str) -> i64 {
        match self.reply(&["PUBSUB", "NUMSUB", channel]) {
            Reply::Array(items) => match items.as_slice() {
                [_, Reply::Integer(n)] => *n,
                other => panic!("unexpected NUMSUB reply {other:?}"),
            },
            other => panic!("unexpected NUMSUB reply {other:?}"),
        }
    }

    /// The keys matching the glob `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.reply(&["KEYS", pattern]).strings()
    }

    /// How many PUBLISH (and SPUBLISH) commands Redis has executed since it started.
    pub fn publish_calls(&self) -> u64 {
        let Reply::Bulk(Some(info)) = self.reply(&["INFO", "commandstats"]) else {
            panic!("INFO commandstats did not answer a bulk string");
        };
        info.lines()
            .filter(|line| {
                line.starts_with("cmdstat_publish:") || line.starts_with("cmdstat_spublish:")
            })
            .filter_map(|line| {
                line.split_once("calls=")
                    .and_then(|(_, rest)| rest.split(',').next())
                    .and_then(|calls| calls.parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

impl Reply {
    /// The bulk strings of an array reply (KEYS, PUBSUB CHANNELS).
    pub fn strings(self) -> Vec<String> {
        match self {
            Reply::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Reply::Bulk(Some(text)) => text,
                    other => panic!("expected a bulk string, got {other:?}"),
                })
                .collect(),
            other => panic!("expected an array, got {other:?}"),
        }
    }
}

/// Reads one complete reply, appending its bytes to `raw`.
fn read_reply(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> Reply {
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .unwrap_or_else(|e| panic!("read a Redis reply: {e}"));
    raw.extend_from_slice(&line);
    let Some(body) = line.strip_suffix(b"\r\n").filter(|body| !body.is_empty()) else {
        panic!(
            "truncated Redis reply: {:?}",
            String::from_utf8_lossy(&line)
        );
    };
    let text = String::from_utf8_lossy(&body[1..]).into_owned();
    let number = || -> i64 {
        text.parse()
            .unwrap_or_else(|_| panic!("bad length or integer in Redis reply {text:?}"))
    };
    match body[0] {
        b'+' => Reply::Status(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Integer(number()),
        b'$' => match usize::try_from(number()) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0u8; len + 2];
                reader
                    .read_exact(&mut data)
                    .unwrap_or_else(|e| panic!("read a Redis bulk string: {e}"));
                raw.extend_from_slice(&data);
                data.truncate(len);
                Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
            }
        },
        b'*' => match usize::try_from(number()) {
            Err(_) => Reply::Array(Vec::new()),
            Ok(len) => Reply::Array((0..len).map(|_| read_reply(reader, raw)).collect()),
        },
        other => panic!("unknown RESP type {:?} in {text:?}", char::from(other)),
    }
}

// ---- wshub instances joined through Redis (tests/cluster.rs, tests/cluster_failures.rs) ----

/// The `--api-key` every instance gets, for `/api/online` and `/api/publish`.
pub const API_KEY: &str = "cluster-k3y";
/// `--redis-presence-ttl` of every instance: short, so the SIGKILL tests run in seconds.
pub const PRESENCE_TTL: Duration = Duration::from_secs(2);

/// Starts a wshub instance named `id` joined through `redis_url`, with `extra` flags. It does
/// not wait for Redis: see [`wait_redis_up`].
pub fn instance(redis_url: &str, id: &str, extra: &[&str]) -> Daemon {
    let ttl = format!("{}s", PRESENCE_TTL.as_secs());
    let mut args = vec![
        "--redis",
        redis_url,
        "--instance-id",
        id,
        "--redis-presence-ttl",
        &ttl,
        "--api-key",
        API_KEY,
    ];
    args.extend_from_slice(extra);
    match std::panic::catch_unwind(|| Daemon::spawn(&args)) {
        Ok(daemon) => daemon,
        Err(_) => {
            // Daemon::spawn only knows no address was printed; run it again to show why.
            let mut command = Command::new(env!("CARGO_BIN_EXE_wshub"));
            command.args(["--listen", "127.0.0.1:0"]).args(&args);
            let output = run_program(command, Duration::from_secs(2));
            panic!(
                "wshub {args:?} did not start (exit {:?}):\n{}",
                output.code, output.stderr
            );
        }
    }
}

/// A Redis and `n` instances (ids `a`, `b`, `c`, …) joined through it, each connected.
pub struct Cluster {
    pub redis: RedisServer,
    pub nodes: Vec<Daemon>,
}

impl Cluster {
    /// Starts Redis and `n` instances with `extra` flags and waits until each is connected, or
    /// returns `None` when `redis-server` is missing outside CI.
    pub fn start(n: usize, extra: &[&str]) -> Option<Cluster> {
        let redis = RedisServer::start()?;
        let nodes: Vec<Daemon> = (0..n)
            .map(|i| instance(&redis.url(), &instance_id(i), extra))
            .collect();
        for node in &nodes {
            wait_redis_up(node);
        }
        Some(Cluster { redis, nodes })
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Starts one more instance on the same Redis and waits until it is connected; returns its
    /// index.
    pub fn add(&mut self, extra: &[&str]) -> usize {
        let i = self.nodes.len();
        let node = instance(&self.redis.url(), &instance_id(i), extra);
        wait_redis_up(&node);
        self.nodes.push(node);
        i
    }
}

/// `a`, `b`, `c`, … for instance 0, 1, 2, …
pub fn instance_id(i: usize) -> String {
    char::from(b'a' + u8::try_from(i).expect("few instances")).to_string()
}

/// The body of `/healthz` (asserting it answers 200 either way).
pub fn healthz(addr: SocketAddr) -> String {
    let (status, head, body) = get(addr, "/healthz");
    assert_eq!(status, 200, "{head}{body}");
    body
}

/// The healthz body while connected to Redis.
pub const HEALTHY: &str = "ok\n";
/// The healthz body while Redis is unavailable.
pub const DEGRADED: &str = "degraded: redis unavailable\n";

/// Waits until `node` says it is connected to Redis (`/healthz` is `ok`).
pub fn wait_redis_up(node: &Daemon) {
    wait_health(node, HEALTHY);
}

/// Waits until `node`'s `/healthz` body is `body`, failing with its log otherwise.
pub fn wait_health(node: &Daemon, body: &str) {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        last = healthz(node.addr);
        if last == body {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "/healthz of {} stayed {last:?}, expected {body:?}; log:\n{}",
        node.addr,
        node.log()
    );
}

/// The value of series `name` in `/metrics`, with or without labels (summed over them).
pub fn metric_total(addr: SocketAddr, name: &str) -> u64 {
    let (_, _, body) = get(addr, "/metrics");
    let values: Vec<u64> = body
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            Some(
                value
                    .trim()
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("non-numeric {name}: {value:?}"))
                    as u64,
            )
        })
        .collect();
    assert!(!values.is_empty(), "no series {name} in\n{body}");
    values.iter().sum()
}

/// `GET /api/online[?room=R]` on `addr`, with the API key; the JSON answer.
pub fn api_online(addr: SocketAddr, room: Option<&str>) -> Value {
    let path = match room {
        Some(room) => format!("/api/online?room={}", percent_encode(room)),
        None => "/api/online".to_owned(),
    };
    let mut stream = tcp_connect(addr);
    let (status, head, body) = http_request(
        &mut stream,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"),
    );
    assert_eq!(status, 200, "{head}{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/online is not JSON ({e}): {body}"))
}

/// The sorted user list of `/api/online[?room=R]` on `addr`.
pub fn api_users(addr: SocketAddr, room: Option<&str>) -> Vec<String> {
    let answer = api_online(addr, room);
    sorted_names(&answer["users"], &answer)
}

/// The names in the JSON array `list` (from `whole`, quoted when it is not one), sorted.
pub fn sorted_names(list: &Value, whole: &Value) -> Vec<String> {
    let mut users: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("no users list in {whole}"))
        .iter()
        .map(|user| user.as_str().expect("user name").to_owned())
        .collect();
    users.sort();
    users
}

/// Asserts the next event of each of `conns` is presence: `user` did `state` in [`ROOM`].
pub fn expect_presence<'a>(conns: impl IntoIterator<Item = &'a mut Conn>, user: &str, state: &str) {
    for conn in conns {
        assert_eq!(
            next_json(&mut conn.client),
            presence(ROOM, user, state),
            "{}",
            conn.name()
        );
    }
}

/// `POST /api/publish` of `body` on `addr`, with the API key; the JSON answer.
pub fn api_publish(addr: SocketAddr, body: &str) -> Value {
    let mut stream = tcp_connect(addr);
    let (status, head, answer) = http_request(
        &mut stream,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{head}{answer}");
    serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("/api/publish answer is not JSON ({e}): {answer}"))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Polls `condition` until it holds or `limit` passes; returns how long it took, or panics
/// with `what` and the last state `condition` described.
pub fn within(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        match condition() {
            Ok(()) => return start.elapsed(),
            Err(state) => assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; last: {state}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- clients of several instances ----

/// The room most cluster tests use.
pub const ROOM: &str = "lobby";

/// How long every client must then stay silent for "nothing more arrives": a duplicate crossing
/// Redis comes one round trip (well under a millisecond here) after the original.
pub const QUIET: Duration = Duration::from_millis(200);

/// A WebSocket client of instance `node`, connected as `user`.
pub struct Conn {
    pub user: String,
    pub node: usize,
    pub client: Client,
}

impl Conn {
    pub fn open(cluster: &Cluster, node: usize, user: &str) -> Conn {
        Conn::open_at(cluster.addr(node), node, user)
    }

    pub fn open_at(addr: SocketAddr, node: usize, user: &str) -> Conn {
        Conn {
            user: user.to_owned(),
            node,
            client: connect(addr, &format!("/ws?user={user}")),
        }
    }

    /// `user@node`, for failure messages.
    pub fn name(&self) -> String {
        format!("{}@{}", self.user, instance_id(self.node))
    }
}

/// Joins `room` and returns the reply, asserting code 0.
pub fn join(client: &mut Client, room: &str) -> Value {
    let reply = request_json(client, &json!({"event": "join", "room": room}).to_string());
    assert_eq!(
        (&reply["event"], &reply["code"]),
        (&json!("join"), &json!(0)),
        "join {room} failed: {reply}"
    );
    reply
}

/// Quits `room`, asserting the reply.
pub fn quit(client: &mut Client, room: &str) {
    assert_eq!(
        request_json(client, &json!({"event": "quit", "room": room}).to_string()),
        json!({"event": "quit", "code": 0, "room": room})
    );
}

pub fn presence(room: &str, user: &str, state: &str) -> Value {
    json!({"event": "presence", "room": room, "data": {"user": user, "state": state}})
}

/// Joins `room` with `conns` one after the other (each join reply before the next join), then
/// checks each received the presence `join` of exactly the users whose first connection joined
/// after it (hub-wide: a second tab anywhere is silent), and nothing else first.
pub fn join_all(room: &str, conns: &mut [&mut Conn]) {
    for conn in conns.iter_mut() {
        join(&mut conn.client, room);
    }
    let mut first_joins: Vec<(usize, String)> = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        if !first_joins.iter().any(|(_, user)| *user == conn.user) {
            first_joins.push((i, conn.user.clone()));
        }
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let mut expected: Vec<String> = first_joins
            .iter()
            .filter(|(j, user)| *j > i && *user != conn.user)
            .map(|(_, user)| user.clone())
            .collect();
        expected.sort();
        let mut got: Vec<String> = (0..expected.len())
            .map(|_| {
                let event = next_json(&mut conn.client);
                assert_eq!(
                    (&event["event"], &event["room"], &event["data"]["state"]),
                    (&json!("presence"), &json!(room), &json!("join")),
                    "{}: expected a presence join, got {event}",
                    conn.name()
                );
                event["data"]["user"].as_str().expect("user").to_owned()
            })
            .collect();
        got.sort();
        assert_eq!(got, expected, "{}: presence joins", conn.name());
    }
}

/// `event` without its `ts`, asserting it had a numeric one.
pub fn without_ts(mut event: Value) -> Value {
    let ts = event.as_object_mut().and_then(|fields| fields.remove("ts"));
    assert!(
        ts.as_ref().is_some_and(Value::is_u64),
        "expected a numeric ts in {event} (got {ts:?})"
    );
    event
}

/// The next data message of `client` within `wait` as JSON, or `None` when nothing came.
pub fn next_json_within(client: &mut Client, wait: Duration) -> Option<Value> {
    set_client_timeout(client, wait.max(Duration::from_millis(1)));
    let got = loop {
        match client.read() {
            Ok(Message::Text(text)) => {
                break Some(serde_json::from_str(&text).expect("JSON message"));
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected text, got {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None;
            }
            Err(e) => panic!("read message: {e}"),
        }
    };
    set_client_timeout(client, TIMEOUT);
    got
}

fn set_client_timeout(client: &mut Client, timeout: Duration) {
    client
        .get_mut()
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
}

/// Asserts none of `conns` receives anything more within [`QUIET`] (pings aside).
pub fn assert_quiet<'a>(conns: impl IntoIterator<Item = &'a mut Conn>) {
    std::thread::sleep(QUIET);
    for conn in conns {
        if let Some(event) = next_json_within(&mut conn.client, Duration::from_millis(5)) {
            panic!("{}: expected nothing more, got {event}", conn.name());
        }
    }
}

/// Waits until `/api/online[?room]` lists exactly `users` (sorted) on every instance.
pub fn wait_users_everywhere(cluster: &Cluster, room: Option<&str>, users: &[String]) {
    for node in 0..cluster.nodes.len() {
        within(
            &format!("{room:?} online on {}", instance_id(node)),
            TIMEOUT,
            || {
                let got = api_users(cluster.addr(node), room);
                if got == users {
                    Ok(())
                } else {
                    Err(format!("{got:?}, expected {users:?}"))
                }
            },
        );
    }
}

pub fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// Reads `count` room messages from `conn` and returns `(from, seq)` of each, in arrival order.
pub fn read_room_messages(conn: &mut Conn, count: usize) -> Vec<(String, u64)> {
    (0..count)
        .map(|_| {
            let event = without_ts(next_json(&mut conn.client));
            assert_eq!(
                (&event["event"], &event["room"]),
                (&json!("message"), &json!(ROOM)),
                "{}: {event}",
                conn.name()
            );
            let from = event["from"].as_str().expect("from").to_owned();
            assert_eq!(event["data"]["by"], json!(from), "{}: {event}", conn.name());
            (from, event["data"]["seq"].as_u64().expect("seq"))
        })
        .collect()
}

/// Asserts each sender's messages appear in send order (0, 1, 2, … with none missing) and each
/// exactly once.
pub fn assert_per_sender_order(who: &str, got: &[(String, u64)], senders: &[&str], each: u64) {
    for sender in senders {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|(from, _)| from == sender)
            .map(|(_, seq)| *seq)
            .collect();
        let expected: Vec<u64> = (0..each).collect();
        if seqs != expected {
            let missing = expected.iter().filter(|s| !seqs.contains(s)).count();
            let unique: HashSet<&u64> = seqs.iter().collect();
            panic!(
                "{who}: messages of {sender} not exactly once in send order: {} received, \
                 {missing} missing, {} duplicates; first 20: {:?}",
                seqs.len(),
                seqs.len() - unique.len(),
                &seqs[..seqs.len().min(20)]
            );
        }
    }
}

pub fn room_message(by: &str, seq: u64) -> String {
    json!({"event": "message", "room": ROOM, "data": {"by": by, "seq": seq}}).to_string()
}
