//! WebSocket frames on the wire (SPEC §5 echo and raw, §6 limits): what the server sends back for
//! good frames, control frames and every kind of bad input, byte for byte.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::*;
use tungstenite::Message;

/// Sends `bytes` on a fresh WebSocket and returns the close code the server answers with.
fn close_code_for(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = raw_websocket(addr, "/ws");
    stream.write_all(bytes).expect("send frames");
    read_close_code(&mut stream)
}

#[test]
fn echo_returns_text_with_the_same_opcode_and_bytes() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = raw_websocket(addr, "/ws");
    let text = "héllo, wörld ✓".as_bytes();
    stream
        .write_all(&client_frame(0x81, text))
        .expect("send text");
    assert_eq!(read_frame(&mut stream), (0x81, text.to_vec()));
    stream
        .write_all(&client_frame(0x81, b""))
        .expect("send empty text");
    assert_eq!(read_frame(&mut stream), (0x81, Vec::new()));
}

#[test]
fn echo_returns_binary_with_the_same_opcode_and_bytes() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = raw_websocket(addr, "/ws");
    let every_byte: Vec<u8> = (0..=255).collect();
    stream
        .write_all(&client_frame(0x82, &every_byte))
        .expect("send binary");
    let mut echoed = vec![0u8; 4 + every_byte.len()];
    std::io::Read::read_exact(&mut stream, &mut echoed).expect("read echo");
    assert_eq!(
        echoed,
        server_frame(0x82, &every_byte),
        "a 256-byte payload takes the 16-bit length form"
    );
}

#[test]
fn echo_works_through_a_tungstenite_client() {
    let addr = start(&["--protocol", "echo"]);
    let mut client = connect(addr, "/ws");
    send_text(&mut client, "hello");
    assert_eq!(next_text(&mut client), "hello");
    let big = vec![7u8; 60 * 1024];
    client
        .send(Message::binary(big.clone()))
        .expect("send binary");
    assert_eq!(next_message(&mut client), Message::binary(big));
}

#[test]
fn fragmented_message_is_echoed_whole() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = raw_websocket(addr, "/ws");
    let mut bytes = client_frame(0x01, b"frag");
    // A ping may arrive between fragments; it is answered at once.
    bytes.extend_from_slice(&client_frame(0x89, b"mid"));
    bytes.extend_from_slice(&client_frame(0x00, b"men"));
    bytes.extend_from_slice(&client_frame(0x80, b"ted"));
    stream.write_all(&bytes).expect("send fragments");
    assert_eq!(read_frame(&mut stream), (0x8A, b"mid".to_vec()));
    assert_eq!(read_frame(&mut stream), (0x81, b"fragmented".to_vec()));
}

#[test]
fn ping_is_answered_with_a_pong_carrying_the_same_payload() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = raw_websocket(addr, "/ws");
    stream
        .write_all(&client_frame(0x89, b"are you there?"))
        .expect("send ping");
    assert_eq!(read_frame(&mut stream), (0x8A, b"are you there?".to_vec()));
    stream
        .write_all(&client_frame(0x89, b""))
        .expect("send empty ping");
    assert_eq!(read_frame(&mut stream), (0x8A, Vec::new()));
}

#[test]
fn client_close_is_answered_with_close_and_the_tcp_connection_ends() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = raw_websocket(addr, "/ws");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    stream
        .write_all(&client_frame(0x88, &payload))
        .expect("send close");
    let (first, reply) = read_frame(&mut stream);
    assert_eq!(first, 0x88);
    assert_eq!(reply[..2], 1000u16.to_be_bytes());
    assert_closed(&mut stream);
    eventually("the connection to be gone", || {
        metric(addr, "wshub_connections") == 0
    });
}

#[test]
fn message_over_max_message_size_is_closed_with_1009() {
    let addr = start(&["--protocol", "echo", "--max-message-size", "1KiB"]);
    assert_eq!(close_code_for(addr, &client_frame(0x82, &[0; 1025])), 1009);
    // Fragments count together: two 600-byte halves are one 1200-byte message.
    let halves = [client_frame(0x02, &[0; 600]), client_frame(0x80, &[0; 600])].concat();
    assert_eq!(close_code_for(addr, &halves), 1009);
    // Exactly at the limit is fine.
    let mut stream = raw_websocket(addr, "/ws");
    stream
        .write_all(&client_frame(0x82, &[9; 1024]))
        .expect("send 1 KiB");
    assert_eq!(read_frame(&mut stream), (0x82, vec![9; 1024]));
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    let addr = start(&["--protocol", "echo"]);
    assert_eq!(
        close_code_for(addr, &client_frame(0x81, &[b'o', b'k', 0xC3, 0x28])),
        1007
    );
    // A close reason must be UTF-8 too.
    assert_eq!(
        close_code_for(addr, &client_frame(0x88, &[0x03, 0xE8, 0xFF])),
        1007
    );
}

#[test]
fn protocol_errors_are_closed_with_1002() {
    let addr = start(&["--protocol", "echo"]);
    let unmasked = vec![0x81, 0x01, b'x'];
    let reserved_data_opcode = client_frame(0x83, b"x");
    let reserved_control_opcode = client_frame(0x8B, b"x");
    let rsv1_without_extension = client_frame(0xC1, b"x");
    let fragmented_ping = client_frame(0x09, b"x");
    let continuation_without_start = client_frame(0x80, b"x");
    for bytes in [
        unmasked,
        reserved_data_opcode,
        reserved_control_opcode,
        rsv1_without_extension,
        fragmented_ping,
        continuation_without_start,
    ] {
        assert_eq!(close_code_for(addr, &bytes), 1002, "for {bytes:02x?}");
    }
}

#[test]
fn bad_input_leaves_other_clients_unaffected() {
    let addr = start(&["--protocol", "raw", "--max-message-size", "1KiB"]);
    let mut bystander = connect(addr, "/ws");
    let bad_inputs: [Vec<u8>; 4] = [
        client_frame(0x82, &[0; 2000]),
        client_frame(0x81, &[0xC3, 0x28]),
        vec![0x81, 0x01, b'x'],
        // A confused client that keeps speaking HTTP after the upgrade.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    for bytes in &bad_inputs {
        let mut stream = raw_websocket(addr, "/ws");
        stream.write_all(bytes).expect("send bad input");
        assert_closed(&mut stream);
    }
    // Nothing of the bad input was relayed: the next message the bystander sees is this one.
    let mut sender = connect(addr, "/ws");
    send_text(&mut sender, "still here");
    assert_eq!(next_text(&mut bystander), "still here");
    assert_eq!(next_text(&mut sender), "still here");
    send_text(&mut bystander, "me too");
    assert_eq!(next_text(&mut sender), "me too");
    assert_eq!(metric(addr, "wshub_connections"), 2);
}

#[test]
fn stream_split_mid_frame_is_reassembled() {
    let addr = start(&["--protocol", "echo"]);
    let mut stream = raw_websocket(addr, "/ws");
    stream.set_nodelay(true).expect("nodelay");
    let bytes = [client_frame(0x81, b"one"), client_frame(0x82, &[0xAB; 300])].concat();
    // The first frame (9 bytes) and the start of the second one's header.
    let (head, tail) = bytes.split_at(12);
    stream.write_all(head).expect("send first part");
    stream.flush().expect("flush");
    // Only the complete first message may come back before the rest arrives.
    assert_eq!(read_frame(&mut stream), (0x81, b"one".to_vec()));
    stream.write_all(tail).expect("send the rest");
    assert_eq!(read_frame(&mut stream), (0x82, vec![0xAB; 300]));
    // Neither message is counted twice nor left out.
    assert_eq!(metric(addr, "wshub_messages_received_total"), 2);
}

#[test]
fn ping_flood_from_a_client_that_never_reads_is_cut_off_as_a_slow_consumer() {
    // Twice what the kernel buffers for a non-reading client (about 4 MiB on loopback), so
    // the pongs owed exceed --max-buffered many times over.
    const FLOOD: usize = 8 << 20;
    let addr = start(&[
        "--protocol",
        "echo",
        "--max-buffered",
        "256KiB",
        "--max-message-size",
        "64KiB",
    ]);
    let mut stream = raw_websocket(addr, "/ws");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("write timeout");
    let ping = client_frame(0x89, &[b'p'; 125]);
    let batch = ping.repeat(1000);
    let mut sent = 0;
    // Stops early once the server has dropped the connection.
    while sent < FLOOD && stream.write_all(&batch).is_ok() {
        sent += batch.len();
    }
    eventually("the ping flooder to be cut off as a slow consumer", || {
        metric(addr, "wshub_slow_consumer_disconnects_total") == 1
    });
    assert_eq!(metric(addr, "wshub_connections"), 0);
}
