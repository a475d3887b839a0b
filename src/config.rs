//! Every setting of the daemon: command-line flags, `WSHUB_*` environment variables and an optional
//! TOML file, in that order of precedence (SPEC §2).
//!
//! The file is applied by turning its entries into clap defaults before the command line is parsed,
//! so clap itself enforces "flags beat env beat file" and reports every error in one format.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::netaddr::Cidr;
use crate::units::{parse_duration, parse_size};

/// What the server does with the messages clients send (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// JSON events: rooms, presence, direct messages.
    Events,
    /// Every text or binary message is broadcast verbatim to every client (gorilla chat).
    Raw,
    /// Every message goes back to its sender only (conformance testing).
    Echo,
}

/// wshub: a WebSocket hub that knows who is online and in which rooms and fans messages out.
///
/// Every flag can also be set through the environment (`WSHUB_<FLAG>`, shown below) or in the
/// TOML file given with `--config` (keys are the flag names). Flags beat the environment, which
/// beats the file. Durations are written 30s, 500ms, 2m (a bare number is seconds); sizes 64KiB,
/// 4MiB (a bare number is bytes).
#[derive(Clone, Debug, Parser)]
#[command(name = "wshub", version, max_term_width = 100)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket connections.
    #[arg(long, env = "WSHUB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Path that accepts WebSocket upgrades.
    #[arg(long, env = "WSHUB_WS_PATH", default_value = "/ws", value_parser = parse_ws_path)]
    pub ws_path: String,

    /// Message protocol spoken on the WebSocket path.
    #[arg(long, env = "WSHUB_PROTOCOL", value_enum, default_value = "events")]
    pub protocol: Protocol,

    /// Most WebSocket connections held at once; further upgrades get 503.
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: usize,

    /// Largest message (and HTTP request body) accepted; bigger messages close with 1009.
    #[arg(long, env = "WSHUB_MAX_MESSAGE_SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_message_size: usize,

    /// Largest HTTP request head accepted; bigger heads get 431.
    #[arg(long, env = "WSHUB_MAX_HEADER_BYTES", default_value = "8KiB", value_parser = parse_size)]
    pub max_header_bytes: usize,

    /// Pending output per connection above which it is disconnected as a slow consumer (1008): a
    /// hard cap, checked at every append whether or not the socket takes writes.
    #[arg(long, env = "WSHUB_MAX_BUFFERED", default_value = "4MiB", value_parser = parse_size)]
    pub max_buffered: usize,

    /// Serve the page from this folder (read once at start-up) instead of the embedded copy.
    #[arg(long, env = "WSHUB_ASSETS", value_name = "DIR")]
    pub assets: Option<PathBuf>,

    /// Browser origin allowed besides the server's own (repeatable; `*` allows every origin).
    /// Reached directly under a DNS name (not an IP or localhost, no --trusted-proxy in front),
    /// even the server's own origin must be listed: that is what stops DNS rebinding.
    #[arg(
        long = "allow-origin",
        env = "WSHUB_ALLOW_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origins: Vec<String>,

    /// Interval between server pings to each WebSocket client.
    #[arg(long, env = "WSHUB_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Close a WebSocket connection that sent nothing (no frame of any kind) for this long.
    #[arg(long, env = "WSHUB_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Close a connection that has not completed its HTTP request within this time.
    #[arg(long, env = "WSHUB_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Close a connection whose pending output makes no progress for this long.
    #[arg(long, env = "WSHUB_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to keep flushing Close 1001 and pending output before exiting.
    #[arg(long, env = "WSHUB_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Most bytes queued for all connections together; past it the largest queues are cut
    /// first, as slow consumers.
    #[arg(long, env = "WSHUB_MAX_OUTPUT_MEMORY", default_value = "1GiB", value_parser = parse_size)]
    pub max_output_memory: usize,

    /// WebSocket connections one client address may hold; further upgrades get 429. Each address
    /// (except a --trusted-proxy) also holds at most 32 sockets that are not open WebSockets;
    /// further ones are closed at once. Without this flag the limit is 256 and loopback addresses
    /// are exempt from both (a local reverse proxy whose forwarded addresses are not trusted,
    /// local load tests); given explicitly, it applies to every address.
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS_PER_IP", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: Option<u32>,

    /// `join`, `quit` and `online` requests per second each connection may send (token bucket,
    /// burst 2x); excess gets error 429.
    #[arg(long, env = "WSHUB_COMMAND_RATE", default_value = "20", value_name = "PER_SEC", value_parser = clap::value_parser!(u32).range(1..))]
    pub command_rate: u32,

    /// In a room with more connections than this (counting the one joining or leaving), joins
    /// and leaves are not announced (counts and `online` still answer), so a mass join costs
    /// O(N) deliveries, not O(N^2).
    #[arg(
        long,
        env = "WSHUB_PRESENCE_MAX_MEMBERS",
        default_value = "1000",
        value_name = "N"
    )]
    pub presence_max_members: usize,

    /// Messages per second each connection may send (token bucket, burst 2x); excess is refused.
    #[arg(long, env = "WSHUB_RATE_LIMIT", value_name = "MSGS_PER_SEC", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,

    /// HS256 secret: WebSocket clients must present a JWT (query `token`, `Authorization: Bearer`
    /// or a `bearer.<JWT>` subprotocol) whose `sub` becomes their user id.
    #[arg(
        long,
        env = "WSHUB_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_secret_file"
    )]
    pub jwt_secret: Option<String>,

    /// Read the HS256 secret from this file (trailing newline ignored) instead of --jwt-secret.
    #[arg(long, env = "WSHUB_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Clock skew tolerated when checking a token's `exp` and `nbf`.
    #[arg(long, env = "WSHUB_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Key for the HTTP API (`Authorization: Bearer KEY` on /api/*); without it the API is off.
    #[arg(long, env = "WSHUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Proxy whose X-Forwarded-For / X-Real-IP is believed for the client address (repeatable).
    #[arg(
        long = "trusted-proxy",
        env = "WSHUB_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,

    /// Messages each room keeps for clients that reconnect (SPEC §11): a `join` with `since`
    /// gets what it missed. 0 turns history off (room messages then carry no `offset`).
    #[arg(long, env = "WSHUB_HISTORY_SIZE", default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub history_size: u32,

    /// How long a room keeps a message for recovery; a room empty for this long is forgotten
    /// (its offsets then start over, under a new epoch).
    #[arg(long, env = "WSHUB_HISTORY_TTL", default_value = "5m", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// Most memory the history of all rooms together may hold on this instance; past it the
    /// oldest messages go first, whatever their room. (With --redis, Redis holds the history.)
    #[arg(long, env = "WSHUB_HISTORY_MAX_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub history_max_memory: usize,

    /// Join other instances into one hub through this Redis (or Valkey):
    /// redis://[user:password@]host:port[/db]. The host is resolved once, at start-up. Without
    /// it nothing connects and the instance is a hub of its own.
    #[arg(long, env = "WSHUB_REDIS", value_name = "URL", hide_env_values = true, value_parser = crate::redis::parse_redis_url)]
    pub redis: Option<crate::redis::RedisUrl>,

    /// This instance's name in logs, metrics and Redis (letters, digits, `.`, `_`, `-`, `:`);
    /// defaults to host name, process id and a random suffix.
    #[arg(long, env = "WSHUB_INSTANCE_ID", value_name = "NAME", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    /// Prefix of every Redis key and channel, so several hubs can share one Redis.
    #[arg(long, env = "WSHUB_REDIS_PREFIX", default_value = "wshub", value_name = "PREFIX", value_parser = parse_instance_id)]
    pub redis_prefix: String,

    /// An instance that stops (even killed with SIGKILL) leaves the hub within this: its users
    /// drop out of the other instances' lists, with presence `leave`.
    #[arg(long, env = "WSHUB_REDIS_PRESENCE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub redis_presence_ttl: Duration,

    /// Log level (error, warn, info, debug, trace); defaults to RUST_LOG, else info.
    #[arg(long, env = "WSHUB_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// TOML file with settings (keys are flag names, e.g. `max-connections = 20000`).
    #[arg(long, env = "WSHUB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl Config {
    /// Reads the configuration from the process's arguments, environment and `--config` file.
    pub fn load() -> Result<Config, clap::Error> {
        Self::load_from(std::env::args_os())
    }

    /// Same as [`Config::load`] with explicit arguments (the first one is the program name).
    pub fn load_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Config::command();
        let file =
            config_file_path(&args).or_else(|| std::env::var_os("WSHUB_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            command = apply_file_defaults(command, &path)?;
        }
        let matches: ArgMatches = command.try_get_matches_from_mut(args)?;
        let mut config = Config::from_arg_matches(&matches)?;
        config
            .read_secret_file()
            .map_err(|message| Config::command().error(clap::error::ErrorKind::Io, message))?;
        config.validate().map_err(|message| {
            Config::command().error(clap::error::ErrorKind::ValueValidation, message)
        })?;
        Ok(config)
    }

    /// Moves the secret from `--jwt-secret-file` into `jwt_secret`.
    fn read_secret_file(&mut self) -> Result<(), String> {
        if let Some(path) = &self.jwt_secret_file {
            let secret = std::fs::read_to_string(path)
                .map_err(|e| format!("could not read --jwt-secret-file {}: {e}", path.display()))?;
            self.jwt_secret = Some(secret.trim_end_matches(['\r', '\n']).to_owned());
        }
        Ok(())
    }

    /// Cross-field rules that a single flag's parser cannot see.
    fn validate(&self) -> Result<(), String> {
        if self.max_buffered < self.max_message_size + crate::frame::MAX_HEADER_LEN {
            return Err(format!(
                "--max-buffered ({}) must admit one message of --max-message-size ({})",
                crate::units::format_size(self.max_buffered),
                crate::units::format_size(self.max_message_size)
            ));
        }
        if self.jwt_secret.as_deref().is_some_and(str::is_empty) {
            return Err("the JWT secret must not be empty (anyone could sign tokens)".into());
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err("--api-key must not be empty".into());
        }
        if self.max_output_memory < self.max_buffered {
            return Err(format!(
                "--max-output-memory ({}) must be at least --max-buffered ({})",
                crate::units::format_size(self.max_output_memory),
                crate::units::format_size(self.max_buffered)
            ));
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.history_ttl < Duration::from_secs(1) {
            return Err("--history-ttl must be at least 1s".into());
        }
        if self.redis_presence_ttl < Duration::from_millis(500) {
            return Err("--redis-presence-ttl must be at least 500ms".into());
        }
        if self.ping_interval.is_zero() || self.idle_timeout.is_zero() {
            return Err("--ping-interval and --idle-timeout must be above zero".into());
        }
        Ok(())
    }
}

/// An instance id or key prefix: it is written into Redis keys, channels and the header of
/// every published event, so it holds no spaces, newlines or other surprises.
fn parse_instance_id(text: &str) -> Result<String, String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if text.is_empty() || text.len() > 64 || !text.chars().all(fine) {
        return Err(format!(
            "invalid name {text:?}: 1 to 64 letters, digits, '.', '_', '-' or ':'"
        ));
    }
    Ok(text.to_owned())
}

fn parse_ws_path(text: &str) -> Result<String, String> {
    let reserved = ["/", "/healthz", "/metrics"];
    if !text.starts_with('/') || text.contains(['?', '#', ' ']) {
        Err(format!(
            "invalid path {text:?}: must start with / and have no query"
        ))
    } else if reserved.contains(&text) || text.starts_with("/assets/") || text.starts_with("/api/")
    {
        Err(format!("invalid path {text:?}: used by the server itself"))
    } else {
        Ok(text.to_owned())
    }
}

/// Finds `--config FILE` or `--config=FILE` before clap runs, so the file can supply defaults.
fn config_file_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
    }
    None
}

/// Turns each entry of the TOML file into the default value of the flag with the same name.
fn apply_file_defaults(
    mut command: clap::Command,
    path: &Path,
) -> Result<clap::Command, clap::Error> {
    let fail = |message: String| Config::command().error(clap::error::ErrorKind::Io, message);
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "could not read config file {}: {e}",
            path.display()
        ))
    })?;
    let table: toml::Table = text.parse().map_err(|e| {
        fail(format!(
            "could not parse config file {}: {e}",
            path.display()
        ))
    })?;
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(id) = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()) && long != "config")
            .map(|arg| arg.get_id().clone())
        else {
            return Err(fail(format!(
                "unknown setting {key:?} in config file {}",
                path.display()
            )));
        };
        let values: Vec<String> = match value {
            toml::Value::Array(items) => items.iter().map(toml_scalar).collect::<Option<_>>(),
            scalar => toml_scalar(&scalar).map(|s| vec![s]),
        }
        .ok_or_else(|| {
            fail(format!(
                "setting {key:?} in {} must be a string, number or list",
                path.display()
            ))
        })?;
        command = command.mut_arg(id, |arg| arg.default_values(values));
    }
    Ok(command)
}

fn toml_scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let config = Config::load_from(["wshub"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.ws_path, "/ws");
        assert_eq!(config.protocol, Protocol::Events);
        assert_eq!(config.max_message_size, 64 * 1024);
        assert_eq!(config.max_header_bytes, 8 * 1024);
        assert_eq!(config.max_buffered, 4 << 20);
        assert_eq!(config.ping_interval, Duration::from_secs(30));
        assert_eq!(config.idle_timeout, Duration::from_secs(75));
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.write_timeout, Duration::from_secs(10));
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.max_output_memory, 1 << 30);
        assert_eq!(config.max_connections_per_ip, None);
        assert_eq!(config.command_rate, 20);
        assert_eq!(config.presence_max_members, 1000);
        assert_eq!(config.redis, None);
        assert_eq!(config.instance_id, None);
        assert_eq!(config.redis_prefix, "wshub");
        assert_eq!(config.redis_presence_ttl, Duration::from_secs(15));
        assert_eq!(config.history_size, 100);
        assert_eq!(config.history_ttl, Duration::from_secs(300));
        assert_eq!(config.history_max_memory, 256 << 20);
    }

    #[test]
    fn redis_flags_are_checked_at_start_up() {
        let config = Config::load_from([
            "wshub",
            "--redis",
            "redis://:pw@127.0.0.1:6380/1",
            "--instance-id",
            "web-1",
            "--redis-presence-ttl",
            "3s",
        ])
        .unwrap();
        let url = config.redis.unwrap();
        assert_eq!(
            (url.port, url.db, url.password.as_deref()),
            (6380, 1, Some("pw"))
        );
        assert_eq!(config.instance_id.as_deref(), Some("web-1"));
        for bad in [
            ["--redis", "localhost:6379"],
            ["--instance-id", "two words"],
            ["--redis-prefix", "a\nb"],
            ["--redis-presence-ttl", "100ms"],
        ] {
            let err = Config::load_from(["wshub", bad[0], bad[1]]).unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn flags_parse_sizes_durations_and_repeated_origins() {
        let config = Config::load_from([
            "wshub",
            "--max-message-size",
            "1MiB",
            "--max-buffered=8MiB",
            "--ping-interval",
            "500ms",
            "--allow-origin",
            "https://a.example",
            "--allow-origin=https://b.example",
            "--protocol",
            "raw",
        ])
        .unwrap();
        assert_eq!(config.max_message_size, 1 << 20);
        assert_eq!(config.ping_interval, Duration::from_millis(500));
        assert_eq!(
            config.allow_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(config.protocol, Protocol::Raw);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let error = Config::load_from(["wshub", "--max-message-size", "lots"]).unwrap_err();
        assert!(error.to_string().contains("--max-message-size"), "{error}");
        assert!(Config::load_from(["wshub", "--ws-path", "ws"]).is_err());
        assert!(Config::load_from(["wshub", "--ws-path", "/healthz"]).is_err());
        assert!(Config::load_from(["wshub", "--max-buffered", "1KiB"]).is_err());
    }

    #[test]
    fn jwt_secret_comes_from_a_file_and_must_not_be_empty() {
        let path = std::env::temp_dir().join(format!("wshub-secret-test-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let config =
            Config::load_from(["wshub", "--jwt-secret-file", path.to_str().unwrap()]).unwrap();
        assert_eq!(config.jwt_secret.as_deref(), Some("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(Config::load_from(["wshub", "--jwt-secret-file", path.to_str().unwrap()]).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(
            Config::load_from(["wshub", "--jwt-secret", "a", "--jwt-secret-file", "/x"]).is_err()
        );
    }

    #[test]
    fn trusted_proxies_parse_as_cidrs() {
        let config = Config::load_from([
            "wshub",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy=::1",
        ])
        .unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(Config::load_from(["wshub", "--trusted-proxy", "10.0.0.0/33"]).is_err());
    }

    #[test]
    fn file_values_apply_but_flags_win() {
        let dir = std::env::temp_dir().join(format!("wshub-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wshub.toml");
        std::fs::write(
            &path,
            "max-connections = 42\nws_path = \"/chat\"\nallow-origin = [\"https://x.example\"]\nping-interval = \"2s\"\n",
        )
        .unwrap();
        let path_arg = path.to_str().unwrap();
        let config =
            Config::load_from(["wshub", "--config", path_arg, "--max-connections", "7"]).unwrap();
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.ws_path, "/chat");
        assert_eq!(config.allow_origins, ["https://x.example"]);
        assert_eq!(config.ping_interval, Duration::from_secs(2));

        std::fs::write(&path, "no-such-setting = 1\n").unwrap();
        let error = Config::load_from(["wshub", "--config", path_arg]).unwrap_err();
        assert!(error.to_string().contains("no-such-setting"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
