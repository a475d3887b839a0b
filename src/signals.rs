//! SIGINT/SIGTERM/SIGHUP delivered to the loop as readable sockets (the self-pipe trick).
//!
//! signal-hook writes a byte to a socket pair from the handler; the loop polls the other end like
//! any connection, so no thread and no flag polling are needed.

use std::io::{self, Read};
use std::os::unix::net::UnixStream as StdUnixStream;

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The read ends of the signal pipes, registered with the loop's poll.
pub struct Signals {
    /// Readable after SIGINT or SIGTERM: drain and exit.
    shutdown: UnixStream,
    /// Readable after SIGHUP: nothing to reload, but it must not kill the process.
    hangup: UnixStream,
}

impl Signals {
    /// Installs the handlers and registers the pipes with `registry`.
    pub fn install(
        registry: &Registry,
        shutdown_token: Token,
        hangup_token: Token,
    ) -> io::Result<Signals> {
        let mut shutdown = pipe(&[SIGINT, SIGTERM])?;
        let mut hangup = pipe(&[SIGHUP])?;
        registry.register(&mut shutdown, shutdown_token, Interest::READABLE)?;
        registry.register(&mut hangup, hangup_token, Interest::READABLE)?;
        Ok(Signals { shutdown, hangup })
    }

    /// Empties the shutdown pipe (a signal may arrive several times), so the next one is seen.
    pub fn drain_shutdown(&mut self) {
        drain(&mut self.shutdown);
    }

    /// Empties the hangup pipe. Each pipe is drained only when its own event fired: draining
    /// the other could swallow a signal whose (edge-triggered) event is still to come.
    pub fn drain_hangup(&mut self) {
        drain(&mut self.hangup);
    }
}

fn drain(stream: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

fn pipe(signals: &[i32]) -> io::Result<UnixStream> {
    let (read, write) = StdUnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    for &signal in signals {
        signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
    }
    Ok(UnixStream::from_std(read))
}
