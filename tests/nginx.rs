//! wshub behind a real nginx, configured by `deploy/nginx.conf` itself: each test reads the
//! example, points its `listen` and upstream `server` lines at free ports, wraps it in a
//! throwaway main configuration (own prefix directory, pid file, logs, `daemon off;`) and runs
//! Debian's nginx in front of an in-process wshub. Also checks that `deploy/wshub.service`
//! starts wshub with flags it accepts and waits longer than the drain on stop.
//!
//! nginx comes from `WSHUB_NGINX` (default `nginx`, then `/usr/sbin/nginx`); without it these
//! tests skip, or fail when `CI=true` (install: `sudo bash scripts/test-deps.sh`).

mod common;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    TIMEOUT, connect, external_program, free_port, get, next_json, next_message, read_head,
    send_text, start, upgrade_request,
};
use serde_json::json;
use tungstenite::{Bytes, Message};

/// The line of the example that the test points at its own wshub.
const UPSTREAM_LINE: &str = "server 127.0.0.1:8080;";
/// The line of the example that the test points at a free port.
const LISTEN_LINE: &str = "listen 80;";
/// Free ports tried before giving up on starting nginx.
const PORT_ATTEMPTS: usize = 5;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with its one line that reads `line` (indentation aside) replaced by `replacement`.
fn with_line_replaced(text: &str, line: &str, replacement: &str) -> String {
    let matches = text.lines().filter(|l| l.trim() == line).count();
    assert_eq!(
        matches, 1,
        "deploy/nginx.conf must have exactly one `{line}` line"
    );
    text.lines()
        .map(|l| {
            if l.trim() == line {
                l.replace(line, replacement)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// nginx running the example config in front of `upstream`, stopped when dropped.
struct Nginx {
    child: Child,
    /// Where nginx listens.
    addr: SocketAddr,
    /// The prefix directory holding the config, pid file, logs and temp files.
    prefix: PathBuf,
}

impl Nginx {
    /// Starts nginx in front of `upstream` (one wshub, or several instances of one hub), or
    /// `None` (after saying why) when nginx is missing.
    fn start(upstream: &[SocketAddr]) -> Option<Nginx> {
        let program = external_program(
            "WSHUB_NGINX",
            &["nginx", "/usr/sbin/nginx"],
            "sudo bash scripts/test-deps.sh",
        )?;
        // nginx cannot bind port 0 and report it, so it gets a port that was free a moment ago;
        // should another test take it in between, try another one.
        for _ in 0..PORT_ATTEMPTS {
            let mut nginx = Nginx::spawn(&program, upstream);
            match nginx.wait_ready() {
                Ok(()) => return Some(nginx),
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("nginx did not start on {}\n{log}", nginx.addr),
            }
        }
        panic!("nginx found no free port in {PORT_ATTEMPTS} attempts");
    }

    fn spawn(program: &Path, upstream: &[SocketAddr]) -> Nginx {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let servers: Vec<String> = upstream.iter().map(|a| format!("server {a};")).collect();
        let site = with_line_replaced(&example("nginx.conf"), UPSTREAM_LINE, &servers.join(" "));
        let site = with_line_replaced(&site, LISTEN_LINE, &format!("listen {addr};"));
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let prefix = std::env::temp_dir().join(format!(
            "wshub-nginx-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&prefix);
        fs::create_dir_all(prefix.join("logs")).expect("create nginx prefix");
        let p = prefix.display();
        let conf = format!(
            "daemon off;\n\
             worker_processes 1;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log {p}/logs/access.log;\n\
             client_body_temp_path {p}/client_body;\n\
             proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n\
             scgi_temp_path {p}/scgi;\n\
             # ---- deploy/nginx.conf ----\n\
             {site}\n\
             }}\n"
        );
        let conf_path = prefix.join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(program)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", program.display()));
        Nginx {
            child,
            addr,
            prefix,
        }
    }

    /// Waits until nginx accepts connections; the error log when it exits or times out.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!(
                    "nginx exited with {status} during start-up\n{}",
                    self.error_log()
                ));
            }
            if TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx did not listen on {}\n{}",
                    self.addr,
                    self.error_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        let log = fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default();
        format!("nginx error log ({}):\n{log}", self.prefix.display())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM is nginx's fast shutdown: the master stops its worker, then exits;
            // SIGKILL would orphan the worker.
            // SAFETY: kill only sends a signal to our child, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() >= deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.prefix);
    }
}

fn without_ts(mut event: serde_json::Value) -> serde_json::Value {
    assert!(event["ts"].is_u64(), "no ts in {event}");
    event.as_object_mut().expect("object").remove("ts");
    event
}

#[test]
fn chat_flow_through_nginx_joins_messages_and_presence() {
    let wshub = start(&["--trusted-proxy", "127.0.0.1/32"]);
    let Some(nginx) = Nginx::start(&[wshub]) else {
        return;
    };

    let mut alice = connect(nginx.addr, "/chat/ws?user=alice");
    let mut bob = connect(nginx.addr, "/chat/ws?user=bob");
    send_text(&mut alice, r#"{"event":"join","room":"lobby","id":1}"#);
    let reply = next_json(&mut alice);
    let epoch = &reply["data"]["epoch"];
    assert_eq!(
        reply,
        json!({"event":"join","id":1,"code":0,"room":"lobby","data":{"count":1,"epoch":epoch,"offset":0}})
    );
    send_text(&mut bob, r#"{"event":"join","room":"lobby","id":"b"}"#);
    assert_eq!(
        next_json(&mut bob),
        json!({"event":"join","id":"b","code":0,"room":"lobby","data":{"count":2,"epoch":epoch,"offset":0}})
    );
    assert_eq!(
        next_json(&mut alice),
        json!({"event":"presence","room":"lobby","data":{"user":"bob","state":"join"}})
    );

    send_text(
        &mut bob,
        r#"{"event":"message","room":"lobby","data":{"text":"hi through nginx"}}"#,
    );
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            without_ts(next_json(client)),
            json!({"event":"message","room":"lobby","from":"bob","data":{"text":"hi through nginx"},"offset":1})
        );
    }
    send_text(&mut alice, r#"{"event":"online","room":"lobby","id":3}"#);
    assert_eq!(
        next_json(&mut alice),
        json!({"event":"online","id":3,"code":0,"room":"lobby","data":{"count":2,"users":["alice","bob"]}})
    );

    bob.close(None).expect("close bob");
    assert_eq!(
        next_json(&mut alice),
        json!({"event":"presence","room":"lobby","data":{"user":"bob","state":"leave"}})
    );
}

#[test]
fn raw_broadcast_through_nginx_reaches_everyone_with_the_same_opcode() {
    let wshub = start(&["--protocol", "raw"]);
    let Some(nginx) = Nginx::start(&[wshub]) else {
        return;
    };

    let mut clients: Vec<_> = (0..3).map(|_| connect(nginx.addr, "/chat/ws")).collect();
    // The hub registers a connection when its upgrade is handled; a round trip through the
    // last client proves all three are registered before the real broadcast.
    clients[2].send(Message::text("warm-up")).expect("send");
    assert_eq!(next_message(&mut clients[2]), Message::text("warm-up"));
    for client in &mut clients[..2] {
        assert_eq!(next_message(client), Message::text("warm-up"));
    }

    let big = Bytes::from(vec![0xA5; 60 * 1024]);
    clients[0]
        .send(Message::text("hello, everyone"))
        .expect("send text");
    clients[1]
        .send(Message::Binary(big.clone()))
        .expect("send binary");
    for client in &mut clients {
        assert_eq!(next_message(client), Message::text("hello, everyone"));
        assert_eq!(next_message(client), Message::Binary(big.clone()));
    }
}

#[test]
fn page_assets_and_healthz_are_served_under_the_prefix() {
    let wshub = start(&[]);
    let Some(nginx) = Nginx::start(&[wshub]) else {
        return;
    };

    let (status, _, body) = get(nginx.addr, "/chat/healthz");
    assert_eq!(
        (status, body.as_str()),
        (200, "ok\n"),
        "{}",
        nginx.error_log()
    );

    let (status, head, page) = get(nginx.addr, "/chat/");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    // The page must reference its files relatively, so that they resolve under /chat/.
    for asset in ["assets/app.js", "assets/style.css"] {
        assert!(
            page.contains(&format!("\"{asset}\"")),
            "page does not reference {asset} relatively"
        );
        let (status, head, body) = get(nginx.addr, &format!("/chat/{asset}"));
        assert_eq!(status, 200, "/chat/{asset}");
        assert!(
            !body.is_empty() && !head.to_ascii_lowercase().contains("text/html"),
            "{head}"
        );
    }
    let (status, head, _) = get(nginx.addr, "/chat");
    assert_eq!(status, 301);
    assert!(head.contains("/chat/\r\n"), "{head}");
    let (status, _, metrics) = get(nginx.addr, "/chat/metrics");
    assert_eq!(status, 200, "metrics from localhost");
    assert!(metrics.contains("wshub_connections "), "{metrics}");
    let (status, _, _) = get(nginx.addr, "/chat/nope");
    assert_eq!(status, 404);
}

#[test]
fn browser_origin_on_a_non_default_port_passes_through_nginx() {
    let wshub = start(&[]);
    let Some(nginx) = Nginx::start(&[wshub]) else {
        return;
    };

    let mut stream = TcpStream::connect(nginx.addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let origin = format!("Origin: http://{}\r\n", nginx.addr);
    stream
        .write_all(upgrade_request(nginx.addr, "/chat/ws?user=carol", &origin).as_bytes())
        .expect("upgrade");
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "same-origin browser upgrade refused: {head}"
    );

    let mut stream = TcpStream::connect(nginx.addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let foreign = "Origin: http://evil.example\r\n";
    stream
        .write_all(upgrade_request(nginx.addr, "/chat/ws", foreign).as_bytes())
        .expect("upgrade");
    let head = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 403 "),
        "foreign origin must still be refused: {head}"
    );
}

#[test]
fn example_config_keeps_idle_websockets_open_longer_than_the_ping_interval() {
    let site = example("nginx.conf");
    let directive = |name: &str| {
        site.lines()
            .map(str::trim)
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_suffix(';'))
            })
            .unwrap_or_else(|| panic!("deploy/nginx.conf has no {name}"))
            .trim()
            .to_owned()
    };
    let read_timeout =
        wshub::units::parse_duration(&directive("proxy_read_timeout ")).expect("duration");
    let config = wshub::Config::load_from(["wshub"]).expect("defaults");
    assert!(
        read_timeout > config.ping_interval,
        "proxy_read_timeout {read_timeout:?} must exceed the ping interval"
    );
    assert_eq!(directive("proxy_http_version "), "1.1");
    assert_eq!(directive("proxy_buffering "), "off");
    assert_eq!(directive("proxy_set_header Upgrade "), "$http_upgrade");
    assert_eq!(
        directive("proxy_set_header Connection "),
        "$connection_upgrade"
    );
    assert!(site.contains("map $http_upgrade $connection_upgrade"));
}

#[test]
fn systemd_unit_starts_wshub_with_valid_flags_and_outwaits_the_drain() {
    let unit = example("wshub.service");
    let setting = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|line| {
                line.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
            })
            .map(str::to_owned)
            .collect()
    };
    let exec = setting("ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert!(argv[0].ends_with("/wshub"), "{argv:?}");
    let config = wshub::Config::load_from(argv.iter().copied())
        .unwrap_or_else(|e| panic!("ExecStart flags: {e}"));
    let stop = wshub::units::parse_duration(&setting("TimeoutStopSec")[0]).expect("TimeoutStopSec");
    assert!(
        stop > config.drain_timeout,
        "TimeoutStopSec {stop:?} must exceed --drain-timeout"
    );
    for required in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "LimitNOFILE=65536",
    ] {
        assert!(
            unit.lines().any(|line| line == required),
            "deploy/wshub.service lacks {required}"
        );
    }
    let families = &setting("RestrictAddressFamilies")[0];
    assert!(
        families.contains("AF_UNIX"),
        "signals wake the loop through a socket pair: keep AF_UNIX"
    );
    let nofile: usize = setting("LimitNOFILE")[0].parse().expect("number");
    assert!(
        nofile > config.max_connections,
        "LimitNOFILE must exceed --max-connections"
    );
}

/// SPEC §10 behind one proxy: the example's upstream lists two instances joined through Redis
/// (`wshub --redis`), nginx spreads the clients over both, and they chat as one hub.
#[test]
fn two_instances_through_redis_behind_one_upstream_are_one_hub() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let flags = ["--trusted-proxy", "127.0.0.1/32"];
    let nodes = [
        common::redis::instance(&redis.url(), "a", &flags),
        common::redis::instance(&redis.url(), "b", &flags),
    ];
    for node in &nodes {
        common::redis::wait_redis_up(node);
    }
    let Some(nginx) = Nginx::start(&[nodes[0].addr, nodes[1].addr]) else {
        return;
    };
    let users = ["alice", "bob", "carol", "dave"];
    let mut clients: Vec<_> = users
        .iter()
        .map(|user| connect(nginx.addr, &format!("/chat/ws?user={user}")))
        .collect();
    for node in &nodes {
        assert_eq!(
            common::metric(node.addr, "wshub_connections"),
            2,
            "nginx spreads the four clients over both instances"
        );
    }
    for (n, client) in clients.iter_mut().enumerate() {
        send_text(client, r#"{"event":"join","room":"lobby"}"#);
        let reply = next_json(client);
        assert_eq!(reply["data"]["count"], n + 1, "hub-wide count: {reply}");
    }
    // Each member heard of each later arrival, whichever instance it came through.
    for (n, client) in clients.iter_mut().enumerate() {
        for later in &users[n + 1..] {
            assert_eq!(
                next_json(client),
                json!({"event":"presence","room":"lobby","data":{"user":later,"state":"join"}})
            );
        }
    }
    send_text(
        &mut clients[3],
        r#"{"event":"message","room":"lobby","data":"one hub"}"#,
    );
    for client in &mut clients {
        assert_eq!(
            without_ts(next_json(client)),
            json!({"event":"message","room":"lobby","from":"dave","data":"one hub","offset":1})
        );
    }
    send_text(&mut clients[0], r#"{"event":"online","room":"lobby"}"#);
    assert_eq!(next_json(&mut clients[0])["data"]["users"], json!(users));
    for client in &mut clients {
        common::assert_nothing_pending(client);
    }
}
