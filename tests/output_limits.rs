//! Output memory under hostile and unlucky readers (SPEC §6): `--max-buffered` caps one
//! connection's queue within one message, `--max-output-memory` caps all of them together (the
//! largest cut first), and the memory of a burst goes back to the system once it drains.
//!
//! The readers that stall here have a small receive buffer, so what they do not read piles up in
//! the server's queues rather than in the kernel's.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Daemon, TIMEOUT, client_frame, eventually, metric, raw_websocket, read_head, upgrade_request,
};

/// The payload of every published message.
const MESSAGE: usize = 1024;

/// A raw WebSocket whose receive buffer is small, so the server cannot park much in the kernel.
fn stalled_reader(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
        .write_all(upgrade_request(addr, "/ws", "").as_bytes())
        .expect("send upgrade");
    assert!(read_head(&mut stream).starts_with("HTTP/1.1 101"));
    stream
}

/// Reads until `want` bytes came, the server closed, or nothing came for [`TIMEOUT`]; returns
/// the bytes read.
fn read_at_least(mut stream: TcpStream, want: usize) -> usize {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    while total < want {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    total
}

/// A raw-protocol publisher whose own copies are read (and counted) by a background thread, so
/// that it is never the slow one.
struct Publisher {
    stream: TcpStream,
    reader: thread::JoinHandle<usize>,
}

impl Publisher {
    /// Connects; the background thread reads `copies` bytes of its own messages.
    fn connect(addr: SocketAddr, copies: usize) -> Publisher {
        let stream = raw_websocket(addr, "/ws");
        let copy = stream.try_clone().expect("clone");
        Publisher {
            stream,
            reader: thread::spawn(move || read_at_least(copy, copies)),
        }
    }

    /// Sends `count` binary messages of [`MESSAGE`] bytes in one write.
    fn burst(&mut self, count: usize) {
        let frame = client_frame(0x82, &[7; MESSAGE]);
        let bytes: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * count)
            .collect();
        self.stream.write_all(&bytes).expect("publish");
    }
}

/// The pending byte counts in the daemon's "slow consumer with N bytes pending" lines.
fn cut_at(daemon: &Daemon) -> Vec<usize> {
    daemon
        .log()
        .lines()
        .filter_map(|line| line.split("slow consumer with ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// The daemon's resident set, in KiB.
fn rss_kib(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
        .expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The daemon's RSS once it is at most `ceiling` KiB, or when `within` has passed: memory given
/// back shows up a little after the queues drain.
fn rss_settled(daemon: &Daemon, ceiling: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut rss = rss_kib(daemon);
    while rss > ceiling && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        rss = rss_kib(daemon);
    }
    rss
}

#[test]
fn a_stalled_reader_is_cut_within_one_message_of_max_buffered() {
    const MAX_BUFFERED: usize = 128 * 1024;
    let daemon = Daemon::spawn(&["--protocol", "raw", "--max-buffered", "128KiB"]);
    let addr = daemon.addr;
    let stalled = stalled_reader(daemon.addr);
    // Several senders at once: one turn reads far more than the cap from them together.
    let mut publishers: Vec<Publisher> = (0..4)
        .map(|_| Publisher::connect(addr, usize::MAX))
        .collect();
    for publisher in &mut publishers {
        publisher.burst(2048);
    }
    eventually("the stalled reader to be cut", || {
        metric(addr, "wshub_slow_consumer_disconnects_total") >= 1
    });
    let frame = MESSAGE + 4;
    for pending in cut_at(&daemon) {
        assert!(
            pending <= MAX_BUFFERED + frame,
            "a queue reached {pending} bytes before it was cut (cap {MAX_BUFFERED} + one message)"
        );
    }
    drop(stalled);
}

#[test]
fn all_queues_together_stay_under_max_output_memory_largest_cut_first() {
    const STALLED: usize = 12;
    const MESSAGES: usize = 900;
    let daemon = Daemon::spawn(&[
        "--protocol",
        "raw",
        "--max-buffered",
        "1MiB",
        "--max-output-memory",
        "4MiB",
    ]);
    let addr = daemon.addr;
    let stalled: Vec<TcpStream> = (0..STALLED).map(|_| stalled_reader(addr)).collect();
    let everything = MESSAGES * (MESSAGE + 4);
    let fast = raw_websocket(addr, "/ws");
    let fast_reader = thread::spawn(move || read_at_least(fast, everything));
    let mut publisher = Publisher::connect(addr, everything);
    // Under 1 MiB per queue, so --max-buffered alone cuts nobody; 12 queues would hold ~10 MiB.
    publisher.burst(MESSAGES);
    assert_eq!(fast_reader.join().expect("fast reader"), everything);
    assert_eq!(publisher.reader.join().expect("own copies"), everything);
    let cut = metric(addr, "wshub_slow_consumer_disconnects_total");
    eprintln!("{cut} of {STALLED} stalled readers cut");
    // Each stalled queue holds most of the burst (~0.9 MiB; the kernel takes a little): at
    // most about four fit under 4 MiB together, and cutting stops once the rest fit.
    assert!(
        cut >= (STALLED / 2) as u64,
        "only {cut} of {STALLED} stalled readers were cut: together they hold more than 4 MiB"
    );
    assert!(
        cut < STALLED as u64,
        "all {STALLED} were cut: only the largest queues should go"
    );
    drop(stalled);
    eventually("every queue to be accounted as empty", || {
        metric(addr, "wshub_output_buffered_bytes") == 0
    });
}

#[test]
fn the_memory_of_a_drained_burst_goes_back_to_the_system() {
    const READERS: usize = 100;
    const MESSAGES: usize = 1500;
    let daemon = Daemon::spawn(&["--protocol", "raw"]);
    let addr = daemon.addr;
    let mut readers: Vec<TcpStream> = (0..READERS).map(|_| stalled_reader(addr)).collect();
    let expected = 2 * MESSAGES * (MESSAGE + 4);
    let mut publisher = Publisher::connect(addr, expected);
    let baseline = rss_kib(&daemon);
    let mut peak = baseline;
    for _ in 0..2 {
        publisher.burst(MESSAGES);
        thread::sleep(Duration::from_millis(300));
        peak = peak.max(rss_kib(&daemon));
    }
    // Every reader catches up on the whole burst; nobody is cut.
    thread::scope(|scope| {
        for reader in &mut readers {
            scope.spawn(move || {
                let mut buf = vec![0; 64 * 1024];
                let mut got = 0;
                while got < expected {
                    got += reader.read(&mut buf).expect("read the burst");
                }
            });
        }
    });
    assert_eq!(metric(addr, "wshub_slow_consumer_disconnects_total"), 0);
    let after = rss_settled(&daemon, baseline + 16 * 1024, Duration::from_secs(3));
    eprintln!("RSS: baseline {baseline} KiB, peak {peak} KiB, after the drain {after} KiB");
    assert!(
        peak > baseline + 64 * 1024,
        "the burst should have been queued in the server (peak {peak} KiB)"
    );
    assert!(
        after <= baseline + 16 * 1024,
        "RSS stayed at {after} KiB after the burst drained (baseline {baseline} KiB, peak {peak} KiB)"
    );
}

#[test]
fn memory_goes_back_once_stalled_readers_are_cut() {
    const READERS: usize = 200;
    const CAP_KIB: u64 = 1024;
    let daemon = Daemon::spawn(&["--protocol", "raw", "--max-buffered", "1MiB"]);
    let addr = daemon.addr;
    let readers: Vec<TcpStream> = (0..READERS).map(|_| stalled_reader(addr)).collect();
    let mut publisher = Publisher::connect(addr, usize::MAX);
    let baseline = rss_kib(&daemon);
    let mut peak = baseline;
    // 20 MiB to each reader: every one of them is cut on the way, and publishing goes on after.
    for _ in 0..40 {
        publisher.burst(500);
        peak = peak.max(rss_kib(&daemon));
    }
    eventually("every stalled reader to be cut", || {
        metric(addr, "wshub_slow_consumer_disconnects_total") == READERS as u64
    });
    // The cut readers are still connected (they never read their Close): their queues hold the
    // rest of one frame, and the process holds little more than before the burst.
    let settled = |what: &str| {
        let rss = rss_settled(&daemon, baseline + 16 * 1024, Duration::from_secs(2));
        eprintln!("RSS {what}: {rss} KiB (baseline {baseline} KiB, peak {peak} KiB)");
        rss
    };
    let cut = settled("with the cut readers connected");
    drop(readers);
    drop(publisher);
    eventually("the stalled readers to be gone", || {
        metric(addr, "wshub_connections") <= 1
    });
    let gone = settled("after they left");
    assert!(
        peak <= baseline + READERS as u64 * 2 * CAP_KIB,
        "peak RSS {peak} KiB: more than twice --max-buffered per reader over {baseline} KiB"
    );
    for rss in [cut, gone] {
        assert!(
            rss <= baseline + 16 * 1024,
            "RSS stayed at {rss} KiB after the burst (baseline {baseline} KiB, peak {peak} KiB)"
        );
    }
}
