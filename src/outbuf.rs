//! A connection's pending output: whole frames appended at the back, bytes written from the front.
//!
//! wshub keeps its own queue instead of tungstenite's write buffer, which never shrinks and
//! memmoves its whole content after every partial write. Here a partial write only moves `head`;
//! the consumed front is dropped in bulk once it is at least half the buffer. Once frames flow, a
//! drained queue keeps its allocation (so a steady stream of messages does not allocate per
//! message) until the loop's liveness check calls [`OutputQueue::release`], so a connection that
//! has gone quiet holds no output memory.

use crate::frame;

/// A drained queue keeps an allocation up to this size until [`OutputQueue::release`]; a bigger
/// one (after a burst) is freed at once.
const RETAIN_CAPACITY: usize = 16 * 1024;

/// The first allocation for frames: a few small messages' worth, so the buffer does not grow by
/// doubling through tiny sizes on every connection.
const INITIAL_CAPACITY: usize = 1024;

/// The consumed front is only dropped once it is this large, so compaction is amortised.
const COMPACT_MIN: usize = 64 * 1024;

/// Bytes waiting to be written to one connection's socket.
#[derive(Debug, Default)]
pub struct OutputQueue {
    /// Queued bytes; `buf[head..]` is still unsent. Only whole frames are ever appended.
    buf: Vec<u8>,
    /// Offset of the first unsent byte: a partial write advances it instead of moving memory.
    head: usize,
    /// Offset of a frame start: at or before `head` once frames are being written, or past it
    /// while a non-frame preamble (the `101` response) is still unsent. Frames are walked from
    /// here (only when the queue is compacted or cut), so the queue can always find the boundary
    /// after the frame that is being written.
    anchor: usize,
    /// Frames follow from `anchor` on ([`OutputQueue::mark_frame_start`] was called). Before
    /// that the queue holds HTTP responses, which are never walked as frames.
    framed: bool,
}

impl OutputQueue {
    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.buf.len()
    }

    /// Appends bytes that form one or more whole frames (or, before
    /// [`OutputQueue::mark_frame_start`], an HTTP response).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.framed && self.buf.capacity() == 0 {
            self.buf.reserve(bytes.len().max(INITIAL_CAPACITY));
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Declares that everything queued so far is a preamble (an HTTP response) and frames start
    /// here, so a later cut never parses the preamble as a frame.
    pub fn mark_frame_start(&mut self) {
        self.anchor = self.buf.len();
        self.framed = true;
    }

    /// The next bytes to write, at most `max` of them.
    pub fn front(&self, max: usize) -> &[u8] {
        let end = self.buf.len().min(self.head.saturating_add(max));
        &self.buf[self.head..end]
    }

    /// Records that `written` bytes from the front reached the socket.
    pub fn consume(&mut self, written: usize) {
        self.head = (self.head + written).min(self.buf.len());
        if self.is_empty() {
            self.clear();
        } else if self.head >= COMPACT_MIN && self.head * 2 >= self.buf.len() {
            let done = if self.framed {
                self.advance_anchor();
                self.anchor.min(self.head)
            } else {
                self.head
            };
            self.buf.drain(..done);
            self.head -= done;
            self.anchor = self.anchor.saturating_sub(done);
        }
    }

    /// Drops every queued frame except the one partly written, so a connection that is being
    /// closed can still receive a well-formed Close frame after it.
    pub fn cut_after_current_frame(&mut self) {
        if !self.framed {
            return;
        }
        self.advance_anchor();
        let keep = if self.anchor >= self.head {
            // Either nothing of the current frame is written, or a preamble is still unsent.
            self.anchor
        } else {
            frame::encoded_len(&self.buf[self.anchor..])
                .map_or(self.buf.len(), |len| self.anchor + len)
        };
        self.buf.truncate(keep);
        if self.is_empty() {
            self.clear();
        } else if self.buf.capacity() > RETAIN_CAPACITY {
            // What is left is the rest of one frame: give the backlog's memory back now, not
            // when the connection finally goes.
            let done = self.anchor.min(self.head);
            self.buf.drain(..done);
            self.buf.shrink_to_fit();
            self.head -= done;
            self.anchor -= done;
        }
    }

    /// Moves `anchor` over every frame that ends at or before `head`.
    fn advance_anchor(&mut self) {
        while self.anchor < self.head {
            match frame::encoded_len(&self.buf[self.anchor..]) {
                Some(len) if self.anchor + len <= self.head => self.anchor += len,
                _ => break,
            }
        }
    }

    /// Frees the buffer of a drained queue (called when the connection has gone quiet).
    pub fn release(&mut self) {
        if self.is_empty() {
            self.buf = Vec::new();
        }
    }

    fn clear(&mut self) {
        // HTTP responses and a lone `101` are not worth keeping memory for; frames are.
        let only_preamble = !self.framed || self.anchor == self.buf.len();
        if only_preamble || self.buf.capacity() > RETAIN_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.head = 0;
        self.anchor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{OpCode, encode};

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode(OpCode::Binary, &vec![fill; len], &mut out);
        out
    }

    #[test]
    fn partial_writes_advance_without_losing_bytes() {
        let mut queue = framed();
        let a = frame(10, b'a');
        let b = frame(300, b'b');
        queue.push(&a);
        queue.push(&b);
        let mut written = Vec::new();
        while !queue.is_empty() {
            let chunk = queue.front(7).to_vec();
            written.extend_from_slice(&chunk);
            queue.consume(chunk.len());
        }
        assert_eq!(written, [a, b].concat());
    }

    /// A queue past its `101`: what every open WebSocket connection has.
    fn framed() -> OutputQueue {
        let mut queue = OutputQueue::default();
        queue.mark_frame_start();
        queue
    }

    #[test]
    fn drained_frames_keep_their_buffer_until_released() {
        let mut queue = framed();
        queue.push(&frame(10, 1));
        queue.consume(queue.len());
        assert!(
            queue.buf.capacity() >= INITIAL_CAPACITY,
            "kept for the next message"
        );
        queue.push(&frame(10, 2));
        queue.consume(queue.len());
        queue.release();
        assert_eq!(queue.buf.capacity(), 0);
    }

    #[test]
    fn drained_queue_frees_bursts_and_http_responses_at_once() {
        let mut queue = framed();
        queue.push(&frame(2 * RETAIN_CAPACITY, 1));
        queue.consume(queue.len());
        assert_eq!(queue.buf.capacity(), 0);

        let mut http = OutputQueue::default();
        http.push(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        http.consume(http.len());
        assert_eq!(http.buf.capacity(), 0);

        let mut upgraded = OutputQueue::default();
        upgraded.push(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        upgraded.mark_frame_start();
        upgraded.consume(upgraded.len());
        assert_eq!(upgraded.buf.capacity(), 0, "a lone 101 is not kept");
    }

    #[test]
    fn large_http_responses_are_never_walked_as_frames() {
        let mut queue = OutputQueue::default();
        let body = vec![0xFF; 3 * COMPACT_MIN];
        queue.push(&body);
        let mut written = 0;
        while !queue.is_empty() {
            let n = queue.front(COMPACT_MIN / 2 + 7).len();
            queue.consume(n);
            written += n;
        }
        assert_eq!(written, body.len());
    }

    #[test]
    fn compaction_keeps_unsent_bytes_in_order() {
        let mut queue = framed();
        let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(4000, i as u8)).collect();
        for f in &frames {
            queue.push(f);
        }
        let all = frames.concat();
        let mut written = Vec::new();
        while !queue.is_empty() {
            let chunk = queue.front(5_001).to_vec();
            written.extend_from_slice(&chunk);
            queue.consume(chunk.len());
            assert!(queue.head <= queue.buf.len());
        }
        assert_eq!(written, all);
    }

    #[test]
    fn cut_keeps_the_partly_written_frame_whole() {
        let mut queue = framed();
        let first = frame(1000, b'x');
        queue.push(&first);
        queue.push(&frame(1000, b'y'));
        queue.push(&frame(1000, b'z'));
        queue.consume(10);
        queue.cut_after_current_frame();
        assert_eq!(queue.front(usize::MAX), &first[10..]);
    }

    #[test]
    fn cut_gives_the_backlog_memory_back() {
        let mut queue = framed();
        let first = frame(1000, b'x');
        queue.push(&first);
        for _ in 0..100 {
            queue.push(&frame(1000, b'y'));
        }
        queue.consume(500);
        queue.cut_after_current_frame();
        assert_eq!(queue.front(usize::MAX), &first[500..]);
        assert!(
            queue.buf.capacity() < RETAIN_CAPACITY,
            "{}",
            queue.buf.capacity()
        );
    }

    #[test]
    fn cut_at_a_frame_boundary_drops_everything() {
        let mut queue = framed();
        let first = frame(100, b'x');
        queue.push(&first);
        queue.push(&frame(100, b'y'));
        queue.consume(first.len());
        queue.cut_after_current_frame();
        assert!(queue.is_empty());
    }

    #[test]
    fn cut_never_parses_the_preamble_as_a_frame() {
        let mut queue = OutputQueue::default();
        queue.push(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        queue.mark_frame_start();
        let preamble_len = queue.len();
        queue.push(&frame(100, b'y'));
        queue.consume(5);
        queue.cut_after_current_frame();
        assert_eq!(queue.len(), preamble_len - 5);
    }

    #[test]
    fn cut_after_compaction_still_finds_the_boundary() {
        let mut queue = framed();
        let frames: Vec<Vec<u8>> = (0..30).map(|i| frame(5000, i as u8)).collect();
        for f in &frames {
            queue.push(f);
        }
        let total = frames.concat();
        let written = 20 * frames[0].len() + 123;
        queue.consume(written);
        queue.cut_after_current_frame();
        assert_eq!(
            queue.front(usize::MAX),
            &total[written..21 * frames[0].len()]
        );
    }
}
