//! The wshub process under test, when the harness starts it: on a free loopback port, pinned to
//! its own core, with limits that keep the server's defaults from deciding a benchmark.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::os;

/// How long the server may take to answer `/healthz` after starting.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long one `/healthz` answer may take.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the server gets to close its clients after SIGTERM before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the server's WebSocket endpoint is (SPEC §3, `--ws-path` default).
pub const WS_PATH: &str = "/ws";
/// Connections the server admits beyond the bench's clients.
const CONNECTION_HEADROOM: usize = 64;
/// Limits raised above their defaults so that only fan-out speed is measured: room for messages
/// far over 64 KiB, for saturation backlogs and for slow upgrades of 19 000 clients. They follow
/// `--protocol`.
const BENCH_FLAGS: &[&str] = &[
    "--max-message-size",
    "1MiB",
    "--max-buffered",
    "64MiB",
    "--handshake-timeout",
    "60s",
    "--log-level",
    "warn",
];

/// A running server; dropping it stops the process.
pub struct ServerProcess {
    child: Child,
    address: SocketAddrV4,
}

impl ServerProcess {
    /// Starts `bin` speaking `protocol` (wshub's `--protocol` value) with room for `clients` and
    /// `extra_args` after the bench flags (so they can override them), pinned to `core` when
    /// given, and waits until `/healthz` answers `ok`.
    pub fn spawn(
        bin: &Path,
        protocol: &str,
        clients: usize,
        extra_args: &[String],
        core: Option<usize>,
    ) -> Result<Self, String> {
        let address = free_port().map_err(|err| format!("could not find a free port: {err}"))?;
        let mut command = Command::new(bin);
        command
            .arg("--listen")
            .arg(address.to_string())
            // Not far above `clients`: wshub warns when this exceeds the open-file limit.
            .arg("--max-connections")
            .arg((clients + CONNECTION_HEADROOM).to_string())
            .arg("--protocol")
            .arg(protocol)
            .args(BENCH_FLAGS)
            .args(extra_args)
            // wshub reads WSHUB_* settings from the environment; this one is the harness's.
            .env_remove("WSHUB_BIN")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(core) = core {
            // SAFETY: the closure only makes the sched_setaffinity system call, which is
            // async-signal-safe, as code between fork and exec must be.
            unsafe {
                command.pre_exec(move || os::pin_to_core(core));
            }
        }
        let child = command
            .spawn()
            .map_err(|err| format!("could not start {}: {err}", bin.display()))?;
        let mut server = Self { child, address };
        server.wait_healthy()?;
        Ok(server)
    }

    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|err| err.to_string())? {
                return Err(format!("the server exited during start-up ({status})"));
            }
            match health(self.address) {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if Instant::now() < deadline => {
                    thread::sleep(HEALTH_POLL_INTERVAL)
                }
                Ok(false) => {
                    return Err(format!("http://{}/healthz did not answer ok", self.address));
                }
                Err(err) => return Err(format!("http://{}/healthz: {err}", self.address)),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(HEALTH_POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now (the kernel's pick for port 0).
fn free_port() -> io::Result<SocketAddrV4> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    Ok(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Whether `GET /healthz` answers `200` with body `ok`.
fn health(address: SocketAddrV4) -> io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&address.into(), HEALTH_POLL_INTERVAL)?;
    stream.set_read_timeout(Some(HEALTH_READ_TIMEOUT))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    // A server that keeps the connection open despite `Connection: close` ends this read with
    // the timeout; what arrived until then is kept and judged.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    let healthy = response.starts_with("HTTP/1.1 200")
        && response
            .split_once("\r\n\r\n")
            .is_some_and(|(_, body)| body.trim() == "ok");
    Ok(healthy)
}
