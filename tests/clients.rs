//! wshub against WebSocket clients nobody on the team wrote: Python's `websockets` and Node's
//! `ws`. Each test starts its own server and runs one scenario of `tests/clients/*_client.*`,
//! which prints `ok: CHECK` per passed check and exits non-zero on the first difference.
//!
//! The programs come from `scripts/test-deps.sh`: `WSHUB_PYTHON` (default
//! `target/venv/bin/python`, with `websockets` installed) and `WSHUB_NODE` (default `node`, with
//! `npm ci` run in `tests/clients`). Missing ones skip the test, or fail it when `CI=true`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ProgramOutput, external_program, missing_dependency, run_program, start};

/// `--max-message-size` of the echo server in the limit scenarios.
const LIMIT: usize = 64 * 1024;

/// How long one scenario may take; they take well under a second.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL: &str = "sudo bash scripts/test-deps.sh";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[derive(Clone, Copy)]
enum Library {
    /// Python `websockets` (asyncio client).
    Websockets,
    /// Node `ws`.
    Ws,
}

impl Library {
    /// The command that runs this library's script, or `None` (after saying why) when the
    /// interpreter or the library is missing.
    fn command(self) -> Option<Command> {
        match self {
            Library::Websockets => {
                let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
                let python = external_program("WSHUB_PYTHON", &[default.to_str()?], INSTALL)?;
                let has_library = Command::new(&python)
                    .args(["-c", "import websockets.asyncio.client"])
                    .status()
                    .is_ok_and(|status| status.success());
                if !has_library {
                    missing_dependency(
                        &format!("the websockets package for {}", python.display()),
                        INSTALL,
                    );
                    return None;
                }
                let mut command = Command::new(python);
                command.arg(clients_dir().join("python_client.py"));
                Some(command)
            }
            Library::Ws => {
                let node = external_program("WSHUB_NODE", &["node"], INSTALL)?;
                if !clients_dir().join("node_modules/ws/package.json").is_file() {
                    missing_dependency(
                        "the ws package in tests/clients/node_modules",
                        "cd tests/clients && npm ci",
                    );
                    return None;
                }
                let mut command = Command::new(node);
                command.arg(clients_dir().join("node_client.js"));
                Some(command)
            }
        }
    }
}

/// Runs `scenario` of `library` against `ws://addr/ws` and checks that every expected check
/// passed; `None` when the test is skipped.
fn run(
    library: Library,
    scenario: &str,
    addr: SocketAddr,
    extra: &[&str],
    checks: &[&str],
) -> Option<ProgramOutput> {
    let mut command = library.command()?;
    command
        .current_dir(clients_dir())
        .arg(scenario)
        .arg(format!("ws://{addr}/ws"))
        .args(extra);
    let output = run_program(command, SCENARIO_TIMEOUT);
    let report = format!("stdout:\n{}\nstderr:\n{}", output.stdout, output.stderr);
    assert_eq!(output.code, Some(0), "{scenario} failed\n{report}");
    for check in checks {
        assert!(
            output.stdout.lines().any(|line| line
                .strip_prefix("ok: ")
                .is_some_and(|l| l.starts_with(check))),
            "check {check:?} did not pass\n{report}"
        );
    }
    assert!(
        output.stdout.lines().any(|line| line == "done"),
        "{scenario} did not finish\n{report}"
    );
    Some(output)
}

fn events_round_trips(library: Library) {
    let addr = start(&[]);
    run(
        library,
        "events",
        addr,
        &[],
        &[
            "ping echoes id",
            "join and presence",
            "online lists the room",
            "room message reaches every member",
            "direct with id echo",
            "close 1000 and presence leave",
        ],
    );
}

fn fragmented_message_arrives_whole(library: Library) {
    let addr = start(&[]);
    run(
        library,
        "fragmented",
        addr,
        &[],
        &[
            "text message in 5 fragments",
            "fragmented binary message is refused whole",
        ],
    );
}

fn limits(library: Library) {
    let limit = LIMIT.to_string();
    let addr = start(&["--protocol", "echo", "--max-message-size", &limit]);
    run(
        library,
        "limits",
        addr,
        &[&limit],
        &[
            &format!("{LIMIT}-byte message is echoed"),
            &format!("{}-byte binary message is echoed", LIMIT - 1),
            &format!("{}-byte message closes with 1009", LIMIT + 1),
        ],
    );
}

fn ping_and_close(library: Library) {
    let addr = start(&["--protocol", "echo"]);
    run(
        library,
        "ping_close",
        addr,
        &[],
        &[
            "ping answered by",
            "close 1000 is echoed",
            "application close code 4001 is echoed",
        ],
    );
}

#[test]
fn python_websockets_events_round_trips_echo_ids_and_presence() {
    events_round_trips(Library::Websockets);
}

#[test]
fn python_websockets_fragmented_message_arrives_whole() {
    fragmented_message_arrives_whole(Library::Websockets);
}

#[test]
fn python_websockets_message_at_the_limit_passes_one_byte_more_closes_1009() {
    limits(Library::Websockets);
}

#[test]
fn python_websockets_ping_is_ponged_and_close_codes_are_echoed() {
    ping_and_close(Library::Websockets);
}

#[test]
fn node_ws_events_round_trips_echo_ids_and_presence() {
    events_round_trips(Library::Ws);
}

#[test]
fn node_ws_fragmented_message_arrives_whole() {
    fragmented_message_arrives_whole(Library::Ws);
}

#[test]
fn node_ws_message_at_the_limit_passes_one_byte_more_closes_1009() {
    limits(Library::Ws);
}

#[test]
fn node_ws_ping_is_ponged_and_close_codes_are_echoed() {
    ping_and_close(Library::Ws);
}
