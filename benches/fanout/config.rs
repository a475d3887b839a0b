//! Command-line options of the fan-out bench.

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::{events, message};

pub const USAGE: &str = "\
usage: cargo bench --bench fanout -- [options]

  --clients N        connections to open (default 1000)
  --publishers P     how many of the clients publish (default 10; 0 = connect only)
  --rate R           messages per second across all publishers (default 1600);
                     0 = as fast as --window allows
  --window W         with --rate 0: a publisher's own messages sent but not yet
                     received back by itself (default 16)
  --size B           bytes per message, at least 24 (default 64)
  --duration S       seconds of publishing (default 10; 0 = connect, measure memory, stop)
  --room NAME        speak the events protocol instead of raw (a started wshub gets
                     --protocol events): every client joins room NAME and publishing
                     starts once all have their join reply; a message is sent as a room
                     message event whose data is the message (--size is its length),
                     and receivers read it from each event's data
  --url URL          measure the server at ws://127.x.x.x:PORT/PATH instead of starting
                     wshub; it must broadcast every text message to every client (with
                     --room: every room message to every member).
                     Repeatable: several instances of one hub. Publishers all connect
                     to the first URL; the other clients go round-robin over every URL
  --server-pid PID   with --url: a server process's pid, for its CPU time and memory
                     (repeatable, one per instance: CPU reported per pid and summed,
                     memory summed)
  --watch-pid NAME=PID  another process whose CPU time is reported under NAME, e.g.
                     redis=1234 (repeatable; not counted as server CPU or memory)
  --server-bin PATH  the wshub binary to start (default: $WSHUB_BIN, else this crate's)
  --server-arg ARG   one more argument for the started wshub, after the bench's own
                     (--protocol raw, or events with --room; limits raised), which it
                     can override (repeatable), e.g. --server-arg --history-size=0
  --harness-core C   the core the harness pins itself to (default 1; a started wshub
                     takes core 0)
  --json             print one JSON object instead of text

Every receiver checks that each publisher's messages arrive once and in order: the message
it last got from a publisher, received again, is a duplicate (the run then exits with
status 1); one older than that is out of order (a late duplicate counts there too).
";

/// Defaults: scenario (a) of BENCHMARKS.md.
const DEFAULT_CLIENTS: usize = 1_000;
const DEFAULT_PUBLISHERS: usize = 10;
const DEFAULT_RATE: u64 = 1_600;
const DEFAULT_WINDOW: u32 = 16;
const DEFAULT_SIZE: usize = 64;
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// The harness's core; a started server takes core 0.
const DEFAULT_HARNESS_CORE: usize = 1;

pub struct Config {
    pub clients: usize,
    pub publishers: usize,
    /// Messages per second over all publishers; 0 asks for saturation bounded by `window`.
    pub rate: u64,
    /// At saturation, the cap on a publisher's own unacknowledged messages: it keeps the server
    /// busy without letting queues (and so latency) grow without bound.
    pub window: u32,
    pub size: usize,
    pub duration: Duration,
    /// What the clients speak: raw broadcast, or the events protocol in one room.
    pub protocol: Protocol,
    pub target: Target,
    /// Processes besides the servers whose CPU time belongs in the report (Redis, a proxy).
    pub watched: Vec<Watched>,
    /// Where the harness pins itself, so that a script can place it beside other processes.
    pub harness_core: usize,
    pub json: bool,
}

/// The message protocol of a run (SPEC §5).
#[derive(Clone, PartialEq, Eq)]
pub enum Protocol {
    /// `--protocol raw`: every text message is broadcast verbatim to every client.
    Raw,
    /// `--protocol events`: every client joins `room`, messages go to the room as events.
    Events { room: String },
}

impl Protocol {
    /// The value of wshub's `--protocol` for this run.
    pub fn server_flag(&self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Events { .. } => "events",
        }
    }
}

/// The server under test.
pub enum Target {
    /// Start wshub; `args` go after the bench's own flags.
    Spawn { bin: PathBuf, args: Vec<String> },
    /// Running servers, one or several instances of one hub; the pids, if known, give CPU time
    /// and memory.
    Urls {
        urls: Vec<WsUrl>,
        server_pids: Vec<u32>,
    },
}

/// A process observed only for its CPU time, named for the report.
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl Watched {
    /// Parses `NAME=PID`; names are plain words because they become report labels.
    fn parse(value: &str) -> Result<Self, String> {
        let (name, pid) = value
            .split_once('=')
            .ok_or_else(|| format!("--watch-pid {value}: expected NAME=PID"))?;
        let plain = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.');
        if name.is_empty() || !name.bytes().all(plain) {
            return Err(format!(
                "--watch-pid {value}: NAME must be letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            pid: number("--watch-pid", pid)?,
        })
    }
}

/// Where clients connect and what their upgrade request names.
#[derive(Clone)]
pub struct WsUrl {
    pub address: SocketAddrV4,
    /// The `Host` header: the URL's authority as written.
    pub host: String,
    pub path: String,
}

impl WsUrl {
    /// Parses `ws://HOST:PORT/PATH`; only IPv4 loopback targets are accepted, since the load
    /// must never leave the machine and clients bind 127.0.0.x source addresses.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (host, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let address = host
            .to_socket_addrs()
            .map_err(|err| format!("{url}: {err}"))?
            .find_map(|address| match address {
                SocketAddr::V4(v4) if v4.ip().is_loopback() => Some(v4),
                _ => None,
            })
            .ok_or_else(|| format!("{url}: the target must be on 127.0.0.0/8"))?;
        Ok(Self {
            address,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl Config {
    /// Parses the arguments `cargo bench` passes (it adds `--bench`). Returns `None` when there is
    /// nothing to run: `--help`, or no arguments at all, which is how `cargo test --benches`
    /// runs a bench without a harness.
    pub fn from_args(args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let args: Vec<String> = args.collect();
        let benched = args.iter().any(|arg| arg == "--bench");
        let mut args = args.into_iter().filter(|arg| arg != "--bench");
        let mut clients = DEFAULT_CLIENTS;
        let mut publishers = DEFAULT_PUBLISHERS;
        let mut rate = DEFAULT_RATE;
        let mut window = DEFAULT_WINDOW;
        let mut size = DEFAULT_SIZE;
        let mut duration = DEFAULT_DURATION;
        let mut protocol = Protocol::Raw;
        let mut json = false;
        let mut urls = Vec::new();
        let mut server_pids = Vec::new();
        let mut watched = Vec::new();
        let mut harness_core = DEFAULT_HARNESS_CORE;
        let mut server_bin = None;
        let mut server_args = Vec::new();
        let mut any = false;
        while let Some(flag) = args.next() {
            any = true;
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--clients" => clients = number(&flag, &value()?)?,
                "--publishers" => publishers = number(&flag, &value()?)?,
                "--rate" => rate = number(&flag, &value()?)?,
                "--window" => window = number(&flag, &value()?)?,
                "--size" => size = number(&flag, &value()?)?,
                "--duration" => duration = seconds(&flag, &value()?)?,
                "--room" => {
                    protocol = Protocol::Events {
                        room: room(&value()?)?,
                    }
                }
                "--url" => urls.push(WsUrl::parse(&value()?)?),
                "--server-pid" => server_pids.push(number(&flag, &value()?)?),
                "--watch-pid" => watched.push(Watched::parse(&value()?)?),
                "--harness-core" => harness_core = number(&flag, &value()?)?,
                "--server-bin" => server_bin = Some(PathBuf::from(value()?)),
                "--server-arg" => server_args.push(value()?),
                "--json" => json = true,
                "--help" | "-h" => {
                    print!("{USAGE}");
                    return Ok(None);
                }
                _ => return Err(format!("unknown option {flag}\n\n{USAGE}")),
            }
        }
        if !any && !benched {
            eprintln!(
                "fanout: no options, nothing to measure (see cargo bench --bench fanout -- --help)"
            );
            return Ok(None);
        }
        let target = if !urls.is_empty() {
            if server_bin.is_some() || !server_args.is_empty() {
                return Err("--server-bin and --server-arg start a server; --url uses one".into());
            }
            Target::Urls { urls, server_pids }
        } else if !server_pids.is_empty() {
            return Err("--server-pid goes with --url".into());
        } else {
            Target::Spawn {
                bin: server_bin.unwrap_or_else(default_server_bin),
                args: server_args,
            }
        };
        let config = Self {
            clients,
            publishers,
            rate,
            window,
            size,
            duration,
            protocol,
            target,
            watched,
            harness_core,
            json,
        };
        config.validate()?;
        Ok(Some(config))
    }

    fn validate(&self) -> Result<(), String> {
        if self.publishers > self.clients {
            return Err("--publishers cannot exceed --clients: publishers are clients".into());
        }
        if self.publishers >= message::MAX_PUBLISHERS {
            return Err(format!(
                "--publishers must be below {}",
                message::MAX_PUBLISHERS
            ));
        }
        if self.size < message::MIN_SIZE {
            return Err(format!(
                "--size must be at least {} bytes",
                message::MIN_SIZE
            ));
        }
        if self.rate == 0 && self.window == 0 {
            return Err("--rate 0 needs a --window of at least 1".into());
        }
        Ok(())
    }
}

/// `--server-bin`, else `$WSHUB_BIN`, else the crate's own `wshub` binary, which cargo builds
/// before benches.
fn default_server_bin() -> PathBuf {
    std::env::var_os("WSHUB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wshub")))
}

fn room(value: &str) -> Result<String, String> {
    if events::valid_room(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "--room {value}: 1 to 128 letters, digits, '-', '_', '.' or ':'"
        ))
    }
}

fn number<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value}: not a valid number"))
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    let secs: f64 = number(flag, value)?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{flag} {value}: not a duration in seconds"))
}
