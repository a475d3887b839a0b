//! Fan-out in the `raw` protocol (SPEC §5, §6): every message reaches every client, in order,
//! byte for byte; one client that does not read never holds the others back, and one that
//! falls too far behind is cut off as a slow consumer.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use common::*;
use tungstenite::Message;

/// Payload size of the big messages: close to the 64 KiB message limit, so few messages add up
/// to more than the kernel buffers a non-reading client (about 4 MiB on loopback).
const BIG: usize = 60 * 1024;

/// The text that tells readers a run of numbered big messages is over.
const END: &[u8] = b"end";

/// Big message number `seq`: the number, then the number's low byte repeated.
fn numbered(seq: usize) -> Vec<u8> {
    let mut payload = vec![seq as u8; BIG];
    payload[..4].copy_from_slice(&u32::try_from(seq).expect("small sequence").to_be_bytes());
    payload
}

/// Reads numbered binary messages, asserting each is the next in order and intact, until some
/// other frame arrives; returns how many came and that frame.
fn read_numbered(stream: &mut TcpStream) -> (usize, (u8, Vec<u8>)) {
    let mut seq = 0;
    loop {
        match read_frame(stream) {
            (0x82, payload) => {
                assert!(
                    payload == numbered(seq),
                    "message {seq} is missing, reordered or damaged"
                );
                seq += 1;
            }
            other => return (seq, other),
        }
    }
}

/// Reads numbered messages until [`END`]; returns how many arrived.
fn read_numbered_until_end(stream: &mut TcpStream) -> usize {
    let (count, last) = read_numbered(stream);
    assert_eq!(
        last,
        (0x81, END.to_vec()),
        "unexpected frame after {count} messages"
    );
    count
}

/// Opens `n` raw WebSockets.
fn open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| raw_websocket(addr, "/ws")).collect()
}

#[test]
fn broadcast_reaches_every_client_in_order_sender_included() {
    let addr = start(&["--protocol", "raw"]);
    let mut clients: Vec<Client> = (0..3).map(|_| connect(addr, "/ws")).collect();
    for text in ["one", "two", "three"] {
        send_text(&mut clients[0], text);
    }
    for client in &mut clients {
        let received: Vec<String> = (0..3).map(|_| next_text(client)).collect();
        assert_eq!(received, ["one", "two", "three"]);
    }
    send_text(&mut clients[2], "four");
    for client in &mut clients {
        assert_eq!(next_text(client), "four");
    }
    assert_eq!(metric(addr, "wshub_messages_received_total"), 4);
    assert_eq!(metric(addr, "wshub_messages_delivered_total"), 12);
}

#[test]
fn every_recipient_sees_the_same_order_across_senders() {
    let addr = start(&["--protocol", "raw"]);
    let mut senders: Vec<Client> = (0..3).map(|_| connect(addr, "/ws")).collect();
    let mut watchers = open(addr, 3);
    for round in 0..20 {
        for (i, sender) in senders.iter_mut().enumerate() {
            sender
                .write(Message::text(format!("s{i}-{round:02}")))
                .expect("queue message");
        }
    }
    for sender in &mut senders {
        sender.flush().expect("send messages");
    }
    let sequences: Vec<Vec<Vec<u8>>> = watchers
        .iter_mut()
        .map(|watcher| (0..60).map(|_| read_frame(watcher).1).collect())
        .collect();
    assert!(
        sequences.iter().all(|s| *s == sequences[0]),
        "recipients disagree on the order"
    );
    for i in 0..3 {
        let prefix = format!("s{i}-");
        let own: Vec<&Vec<u8>> = sequences[0]
            .iter()
            .filter(|m| m.starts_with(prefix.as_bytes()))
            .collect();
        let expected: Vec<Vec<u8>> = (0..20)
            .map(|round| format!("s{i}-{round:02}").into_bytes())
            .collect();
        assert_eq!(
            own,
            expected.iter().collect::<Vec<_>>(),
            "sender {i} reordered"
        );
    }
}

#[test]
fn binary_messages_pass_through_unchanged() {
    let addr = start(&["--protocol", "raw"]);
    let mut sender = connect(addr, "/ws");
    let mut receiver = raw_websocket(addr, "/ws");
    let every_byte: Vec<u8> = (0..=255).collect();
    sender
        .send(Message::binary(every_byte.clone()))
        .expect("send binary");
    sender.send(Message::text("after")).expect("send text");
    sender
        .send(Message::binary(Vec::new()))
        .expect("send empty binary");
    assert_eq!(read_frame(&mut receiver), (0x82, every_byte.clone()));
    assert_eq!(read_frame(&mut receiver), (0x81, b"after".to_vec()));
    assert_eq!(read_frame(&mut receiver), (0x82, Vec::new()));
    assert_eq!(next_message(&mut sender), Message::binary(every_byte));
    assert_eq!(next_text(&mut sender), "after");
    assert_eq!(next_message(&mut sender), Message::binary(Vec::new()));
}

#[test]
fn thousand_clients_each_receive_every_broadcast_in_order() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 100;
    const READER_THREADS: usize = 4;
    let addr = start(&["--protocol", "raw"]);
    let mut clients = open(addr, CLIENTS);
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for i in 0..MESSAGES {
        let text = format!("broadcast {i:03}");
        burst.extend_from_slice(&client_frame(0x81, text.as_bytes()));
        expected.extend_from_slice(&server_frame(0x81, text.as_bytes()));
    }
    clients[0].write_all(&burst).expect("send the broadcasts");
    thread::scope(|scope| {
        for chunk in clients.chunks_mut(CLIENTS / READER_THREADS) {
            let expected = &expected;
            scope.spawn(move || {
                let mut received = vec![0u8; expected.len()];
                for stream in chunk {
                    std::io::Read::read_exact(stream, &mut received).expect("read the broadcasts");
                    assert!(
                        received == *expected,
                        "a client got the broadcasts damaged or out of order"
                    );
                }
            });
        }
    });
    assert_eq!(
        metric(addr, "wshub_messages_delivered_total"),
        (CLIENTS * MESSAGES) as u64
    );
}

/// `messages` numbered messages then [`END`], written by `send` on a new sender connection:
/// asserts that `readers` and the sender itself each receive all of them, in order. Returns
/// the sender, still connected.
fn everyone_receives_all(
    addr: SocketAddr,
    readers: &mut [TcpStream],
    messages: usize,
    send: impl FnOnce(&mut TcpStream, Vec<u8>),
) -> TcpStream {
    let mut sender = raw_websocket(addr, "/ws");
    let mut own = sender.try_clone().expect("clone sender");
    let frames: Vec<u8> = (0..messages)
        .flat_map(|seq| client_frame(0x82, &numbered(seq)))
        .chain(client_frame(0x81, END))
        .collect();
    thread::scope(|scope| {
        let handles: Vec<_> = readers
            .iter_mut()
            .chain(std::iter::once(&mut own))
            .map(|stream| scope.spawn(move || read_numbered_until_end(stream)))
            .collect();
        send(&mut sender, frames);
        for handle in handles {
            assert_eq!(handle.join().expect("reader thread"), messages);
        }
    });
    sender
}

#[test]
fn reader_that_pauses_holds_no_one_back_and_then_catches_up_losslessly() {
    const MESSAGES: usize = 100;
    // Room for the whole run, so the pause itself is never punished.
    let addr = start(&["--protocol", "raw", "--max-buffered", "8MiB"]);
    let mut paused = raw_websocket(addr, "/ws");
    let mut readers = open(addr, 3);
    let _sender = everyone_receives_all(addr, &mut readers, MESSAGES, |sender, frames| {
        // One message at a time, as a steady sender would.
        let one = client_frame(0x82, &numbered(0)).len();
        for chunk in frames.chunks(one) {
            sender.write_all(chunk).expect("send");
        }
    });
    // Over 6 MB went out while one client read nothing: more than the kernel buffers for it.
    assert_eq!(metric(addr, "wshub_slow_consumer_disconnects_total"), 0);
    assert_eq!(metric(addr, "wshub_connections"), 5);
    assert_eq!(read_numbered_until_end(&mut paused), MESSAGES);
}

#[test]
fn one_senders_burst_past_max_buffered_disconnects_no_reader_that_keeps_up() {
    // 140 big messages, over 8 MB, in one write: more than --max-buffered (4 MiB by default)
    // reaches each reader's queue faster than a fair share per turn drains it.
    let addr = start(&["--protocol", "raw"]);
    let mut readers = open(addr, 3);
    everyone_receives_all(addr, &mut readers, 140, |sender, burst| {
        sender.write_all(&burst).expect("send the burst");
    });
    assert_eq!(metric(addr, "wshub_slow_consumer_disconnects_total"), 0);
}

#[test]
fn slow_reader_is_disconnected_others_receive_all() {
    const FAST: usize = 100;
    /// Messages the sender may have in flight before it sees its own copy come back.
    const WINDOW: usize = 2;
    /// Enough to overflow the kernel buffers and then `--max-buffered` several times over.
    const MAX_MESSAGES: usize = 400;
    let addr = start(&[
        "--protocol",
        "raw",
        "--max-buffered",
        "256KiB",
        "--max-message-size",
        "64KiB",
    ]);
    let mut stalled = raw_websocket(addr, "/ws");
    let mut fast = open(addr, FAST);
    let mut sender = raw_websocket(addr, "/ws");
    let echoed = AtomicUsize::new(0);
    let sent = thread::scope(|scope| {
        let readers: Vec<_> = fast
            .iter_mut()
            .map(|stream| scope.spawn(move || read_numbered_until_end(stream)))
            .collect();
        let mut own = sender.try_clone().expect("clone sender");
        let echoed = &echoed;
        let own_reader = scope.spawn(move || {
            let mut seq = 0;
            while let (0x82, _) = read_frame(&mut own) {
                seq += 1;
                echoed.store(seq, Ordering::Release);
            }
            seq
        });
        let mut send_next = |sent: &mut usize| {
            let deadline = Instant::now() + TIMEOUT;
            while *sent >= echoed.load(Ordering::Acquire) + WINDOW {
                assert!(
                    Instant::now() < deadline,
                    "the sender's own message {} never came back",
                    *sent - WINDOW
                );
                thread::yield_now();
            }
            sender
                .write_all(&client_frame(0x82, &numbered(*sent)))
                .expect("send");
            *sent += 1;
        };
        let mut sent = 0;
        while sent % 10 != 0 || metric(addr, "wshub_slow_consumer_disconnects_total") == 0 {
            assert!(
                sent < MAX_MESSAGES,
                "the stalled client was never disconnected"
            );
            send_next(&mut sent);
        }
        // A few more after the disconnect: the others must get these too.
        for _ in 0..5 {
            send_next(&mut sent);
        }
        sender
            .write_all(&client_frame(0x81, END))
            .expect("send end");
        for reader in readers {
            assert_eq!(
                reader.join().expect("fast reader"),
                sent,
                "a fast client missed messages"
            );
        }
        assert_eq!(own_reader.join().expect("sender reader"), sent);
        sent
    });
    assert_eq!(metric(addr, "wshub_slow_consumer_disconnects_total"), 1);
    assert_eq!(metric(addr, "wshub_connections"), FAST as u64 + 1);
    // The stalled client finally reads: a gapless prefix of whole messages, then Close 1008.
    let (seq, last) = read_numbered(&mut stalled);
    assert_eq!(
        last,
        (
            0x88,
            [&1008u16.to_be_bytes()[..], b"slow consumer"].concat()
        )
    );
    assert!(seq < sent, "the stalled client was cut off before the end");
    assert_closed(&mut stalled);
}

#[test]
fn message_sent_just_before_disconnecting_is_still_delivered() {
    let addr = start(&["--protocol", "raw"]);
    let mut receiver = raw_websocket(addr, "/ws");
    let mut sender = raw_websocket(addr, "/ws");
    let mut bytes = client_frame(0x81, b"last words");
    bytes.extend_from_slice(&client_frame(0x88, &1000u16.to_be_bytes()));
    sender.write_all(&bytes).expect("send message and close");
    sender
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    assert_eq!(read_frame(&mut receiver), (0x81, b"last words".to_vec()));
    let mut abrupt = raw_websocket(addr, "/ws");
    abrupt
        .write_all(&client_frame(0x82, &[0xEE; 200]))
        .expect("send message");
    drop(abrupt);
    assert_eq!(read_frame(&mut receiver), (0x82, vec![0xEE; 200]));
    eventually("both senders to be gone", || {
        metric(addr, "wshub_connections") == 1
    });
}
