//! One client connection: connect, upgrade (and with `--room` join the room), then read frames
//! and write masked ones. The only code that touches a client socket.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Socket, Type};

use crate::events::{Event, EventReader};
use crate::frame::{self, Decoded, Opcode};
use crate::handshake::{self, Response};
use crate::tally::{Receiver, Tally};
use crate::wire;

/// The least free space a read gets; the shared buffer grows to fit a frame that needs more.
const MIN_READ: usize = 64 * 1024;
/// Servers ignore the mask's value; pongs and joins are rare enough not to need fresh keys.
const PONG_MASK: [u8; 4] = [0x5A, 0xC3, 0x96, 0x0F];
const JOIN_MASK: [u8; 4] = [0x3C, 0x71, 0xE8, 0x25];
/// First bytes (FIN and opcode) of the frames the harness sends.
const TEXT: u8 = 0x81;
const PONG: u8 = 0x8A;

/// State every client's input goes through. One per harness: with 19 000 clients a read buffer
/// each would cost gigabytes, so input is read into one big buffer and only the unfinished tail of
/// a frame is kept per connection.
pub struct Inbox {
    /// Where every read lands; at least `MIN_READ` bytes past any carried-over input.
    buffer: Vec<u8>,
    /// Time zero of the message stamps.
    clock: Instant,
    /// How a data message is taken apart into stamped messages, per protocol.
    reading: Reading,
    pub tally: Tally,
}

/// How received data messages carry the stamped messages, and what a client does once upgraded.
pub enum Reading {
    /// `--protocol raw`: a message is one or more `\n`-separated stamped messages (gorilla's
    /// chat joins queued ones); nothing to do after the upgrade.
    Lines,
    /// `--protocol events` (`--room`): a message is one event, the stamped message its `data`;
    /// once upgraded, a client sends `join` and is open only when the reply says code 0.
    Events {
        /// The join request's text, the same for every client.
        join_request: Vec<u8>,
        reader: EventReader,
    },
}

impl Inbox {
    pub fn new(clock: Instant, reading: Reading, tally: Tally) -> Self {
        Self {
            buffer: vec![0; 4 * MIN_READ],
            clock,
            reading,
            tally,
        }
    }

    /// Nanoseconds on the bench clock, the unit of message stamps.
    pub fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }
}

/// Why a connection ended.
pub enum Closed {
    /// A Close frame, end of stream or a reset: the server let the client go.
    ByServer,
    /// The connection could not be made or used.
    Io(io::Error),
    /// The server broke HTTP or WebSocket framing.
    Protocol(String),
}

#[derive(PartialEq, Eq)]
enum Phase {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for `101`.
    Upgrading,
    /// With `--room`: upgraded, join sent, waiting for its reply.
    Joining,
    Open,
}

pub struct Conn {
    stream: TcpStream,
    phase: Phase,
    /// Bytes written by the harness but not yet taken by the kernel: the upgrade request,
    /// publishes and pongs. Flushed at once and again on WRITABLE.
    pending_output: Vec<u8>,
    /// How much of `pending_output` the kernel has taken.
    written: usize,
    /// The last write hit `WouldBlock`: wait for WRITABLE instead of trying again.
    write_blocked: bool,
    /// Input that ended inside a frame (or the response head); it goes in front of the next read.
    carry: Vec<u8>,
    /// The start of a line (or event) whose end is in a later fragment of the same message:
    /// gorilla splits a message into frames at its write-buffer size.
    partial_line: Vec<u8>,
    /// Who this client is to the tally and what it has received.
    receiver: Receiver,
}

impl Conn {
    /// Starts a non-blocking connect from `source` (port chosen by the kernel) to `target`.
    /// Binding first spreads clients over several 127.0.0.x sources, each with its own
    /// ephemeral port range.
    pub fn connect(
        source: SocketAddrV4,
        target: SocketAddrV4,
        receiver: Receiver,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::V4(source).into())?;
        match socket.connect(&SocketAddr::V4(target).into()) {
            Err(err) if err.raw_os_error() != Some(libc::EINPROGRESS) => return Err(err),
            _ => {}
        }
        let mut stream = TcpStream::from_std(socket.into());
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Self {
            stream,
            phase: Phase::Connecting,
            pending_output: Vec::new(),
            written: 0,
            write_blocked: false,
            carry: Vec::new(),
            partial_line: Vec::new(),
            receiver,
        })
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn received(&self) -> u64 {
        self.receiver.received()
    }

    /// Index of the URL this client connects to.
    pub fn target(&self) -> usize {
        self.receiver.target()
    }

    /// Handles a readiness event (spurious ones included): finishes the connect, writes what is
    /// pending, reads what has arrived.
    pub fn on_event(
        &mut self,
        writable: bool,
        upgrade_request: &[u8],
        inbox: &mut Inbox,
    ) -> Result<(), Closed> {
        if self.phase == Phase::Connecting {
            if !self.finish_connect()? {
                return Ok(());
            }
            self.phase = Phase::Upgrading;
            self.pending_output.extend_from_slice(upgrade_request);
        }
        if writable {
            self.write_blocked = false;
        }
        self.flush()?;
        self.read_available(inbox)?;
        self.flush()
    }

    /// Queues one text message as a masked frame; [`Conn::flush`] sends it.
    pub fn queue_text(&mut self, message: &[u8], mask: [u8; 4]) {
        wire::encode_masked(TEXT, message, mask, &mut self.pending_output);
    }

    /// Writes pending output until done or `WouldBlock`.
    pub fn flush(&mut self) -> Result<(), Closed> {
        while !self.write_blocked && self.written < self.pending_output.len() {
            match self.stream.write(&self.pending_output[self.written..]) {
                Ok(0) => return Err(Closed::ByServer),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(closed_by(err)),
            }
        }
        if self.written == self.pending_output.len() {
            self.pending_output.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// Whether the connect finished; spurious events leave it in progress.
    fn finish_connect(&mut self) -> Result<bool, Closed> {
        if let Some(err) = self.stream.take_error().map_err(Closed::Io)? {
            return Err(Closed::Io(err));
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(err) => Err(Closed::Io(err)),
        }
    }

    fn read_available(&mut self, inbox: &mut Inbox) -> Result<(), Closed> {
        loop {
            let carried = self.carry.len();
            if inbox.buffer.len() < carried + MIN_READ {
                inbox
                    .buffer
                    .resize((carried + MIN_READ).next_power_of_two(), 0);
            }
            let space = inbox.buffer.len() - carried;
            let read = match self.stream.read(&mut inbox.buffer[carried..]) {
                Ok(0) => return Err(Closed::ByServer),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(closed_by(err)),
            };
            inbox.buffer[..carried].copy_from_slice(&self.carry);
            let end = carried + read;
            let now_ns = inbox.now_ns();
            let consumed = self.consume(
                &inbox.buffer[..end],
                now_ns,
                &mut inbox.reading,
                &mut inbox.tally,
            )?;
            self.carry.clear();
            self.carry.extend_from_slice(&inbox.buffer[consumed..end]);
            // A short read emptied the socket's receive queue. Linux signals every later arrival
            // (data or FIN) as a new edge, so the extra read that would only say `WouldBlock` is
            // skipped: at millions of deliveries per second it would double the syscalls.
            if read < space {
                return Ok(());
            }
        }
    }

    /// Takes the response head and whole frames from `input`; returns how many bytes it took.
    fn consume(
        &mut self,
        input: &[u8],
        now_ns: u64,
        reading: &mut Reading,
        tally: &mut Tally,
    ) -> Result<usize, Closed> {
        let mut taken = 0;
        if self.phase == Phase::Upgrading {
            match handshake::parse_response(input) {
                Ok(Response::Incomplete) => return Ok(0),
                Ok(Response::Upgraded { head_len }) => {
                    taken = head_len;
                    self.phase = match reading {
                        Reading::Lines => Phase::Open,
                        Reading::Events { join_request, .. } => {
                            self.queue_text(join_request, JOIN_MASK);
                            Phase::Joining
                        }
                    };
                }
                Err(err) => return Err(Closed::Protocol(err.to_string())),
            }
        }
        loop {
            match frame::decode(&input[taken..]) {
                Ok(Decoded::Incomplete) => return Ok(taken),
                Ok(Decoded::Frame { frame, len }) => {
                    match frame.opcode {
                        Opcode::Text | Opcode::Binary | Opcode::Continuation => match reading {
                            Reading::Lines => self.on_data(frame.payload, frame.fin, now_ns, tally),
                            Reading::Events { reader, .. } => {
                                self.on_event_data(frame.payload, frame.fin, reader, now_ns, tally)?
                            }
                        },
                        Opcode::Ping => {
                            wire::encode_masked(
                                PONG,
                                frame.payload,
                                PONG_MASK,
                                &mut self.pending_output,
                            );
                        }
                        Opcode::Pong => {}
                        Opcode::Close => return Err(Closed::ByServer),
                    }
                    taken += len;
                }
                Err(err) => return Err(Closed::Protocol(err.to_string())),
            }
        }
    }

    /// Splits a data frame's payload into `\n`-separated messages (gorilla joins queued messages
    /// with `\n`); a message's last frame also ends its last line.
    fn on_data(&mut self, payload: &[u8], fin: bool, now_ns: u64, tally: &mut Tally) {
        let mut rest = payload;
        if !self.partial_line.is_empty() {
            match rest.iter().position(|&byte| byte == b'\n') {
                Some(end) => {
                    self.partial_line.extend_from_slice(&rest[..end]);
                    self.deliver_partial_line(now_ns, tally);
                    rest = &rest[end + 1..];
                }
                None => {
                    self.partial_line.extend_from_slice(rest);
                    if fin {
                        self.deliver_partial_line(now_ns, tally);
                    }
                    return;
                }
            }
        }
        while let Some(end) = line_end(rest, tally.message_size()) {
            self.deliver(&rest[..end], now_ns, tally);
            rest = &rest[end + 1..];
        }
        if fin {
            self.deliver(rest, now_ns, tally);
        } else {
            self.partial_line.extend_from_slice(rest);
        }
    }

    /// Takes one event (in one frame, or the last fragment of one): a room message is a
    /// delivery, the join reply opens the client, an error reply is counted.
    fn on_event_data(
        &mut self,
        payload: &[u8],
        fin: bool,
        reader: &mut EventReader,
        now_ns: u64,
        tally: &mut Tally,
    ) -> Result<(), Closed> {
        if !fin || !self.partial_line.is_empty() {
            self.partial_line.extend_from_slice(payload);
            if !fin {
                return Ok(());
            }
        }
        let fragmented = std::mem::take(&mut self.partial_line);
        let event = if fragmented.is_empty() {
            payload
        } else {
            &fragmented
        };
        match reader.read(event, tally.message_size()) {
            Event::Data(message) => tally.deliver(message, &mut self.receiver, now_ns),
            Event::Joined if self.phase == Phase::Joining => self.phase = Phase::Open,
            Event::JoinRefused if self.phase == Phase::Joining => {
                return Err(Closed::Protocol(format!(
                    "join refused: {}",
                    String::from_utf8_lossy(event)
                )));
            }
            Event::Error => tally.error_reply(),
            Event::Joined | Event::JoinRefused | Event::Other => {}
        }
        Ok(())
    }

    fn deliver(&mut self, line: &[u8], now_ns: u64, tally: &mut Tally) {
        tally.deliver(line, &mut self.receiver, now_ns);
    }

    fn deliver_partial_line(&mut self, now_ns: u64, tally: &mut Tally) {
        tally.deliver(&self.partial_line, &mut self.receiver, now_ns);
        self.partial_line.clear();
    }
}

/// Where the line starting at `rest[0]` ends, if before the end of `rest`. Every line this
/// harness sends is `message_size` bytes, so the common cases need no scan.
fn line_end(rest: &[u8], message_size: usize) -> Option<usize> {
    match rest.get(message_size) {
        Some(b'\n') => Some(message_size),
        None if rest.len() == message_size => None,
        _ => rest.iter().position(|&byte| byte == b'\n'),
    }
}

/// Defers the choice of source port from `bind` to `connect`, where the kernel knows the whole
/// address 4-tuple: otherwise `bind` may pick a port whose last connection to the same server is
/// still in TIME_WAIT, and the connect then stalls for a SYN retransmission (1 s).
fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let enable: libc::c_int = 1;
    // SAFETY: the option value is a c_int that outlives the call, and its size is passed.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn closed_by(err: io::Error) -> Closed {
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Closed::ByServer,
        _ => Closed::Io(err),
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ByServer => write!(f, "closed by the server"),
            Self::Io(err) => write!(f, "{err}"),
            Self::Protocol(message) => write!(f, "{message}"),
        }
    }
}
