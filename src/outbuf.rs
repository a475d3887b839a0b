//! A connection's pending output: whole frames appended at the back, bytes written from the front.
//!
//! wshub keeps its own queue instead of tungstenite's write buffer, which never shrinks and
//! memmoves its whole content after every partial write. Here a partial write only moves `head`;
//! the consumed front is dropped in bulk once it is at least half the buffer. A drained queue
//! keeps a modest allocation while the connection is busy (so a steady stream of messages does
//! not allocate per write) and gives it back when the loop's liveness check finds the
//! connection idle, so an idle connection holds no output memory.

use crate::frame;

/// A drained queue keeps an allocation up to this size until [`OutputQueue::release`]; a bigger
/// one (after a burst) is freed at once.
const RETAIN_CAPACITY: usize = 16 * 1024;

/// A drained queue that never grew past this (one small frame, the `101` response) is freed at
/// once: it is cheap to allocate again, and most connections are idle most of the time.
const SMALL_CAPACITY: usize = 256;

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
}

impl OutputQueue {
    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.buf.len()
    }

    /// Appends bytes that form one or more whole frames.
    pub fn push(&mut self, frames: &[u8]) {
        self.buf.extend_from_slice(frames);
    }

    /// Declares that everything queued so far is a preamble (an HTTP response) and frames start
    /// here, so a later cut never parses the preamble as a frame.
    pub fn mark_frame_start(&mut self) {
        self.anchor = self.buf.len();
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
            self.advance_anchor();
            let done = self.anchor.min(self.head);
            self.buf.drain(..done);
            self.head -= done;
            self.anchor -= done;
        }
    }

    /// Drops every queued frame except the one partly written, so a connection that is being
    /// closed can still receive a well-formed Close frame after it; returns the bytes dropped.
    pub fn cut_after_current_frame(&mut self) -> usize {
        let before = self.len();
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
        }
        before - self.len()
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
        let capacity = self.buf.capacity();
        if capacity <= SMALL_CAPACITY || capacity > RETAIN_CAPACITY {
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
        let mut queue = OutputQueue::default();
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

    #[test]
    fn drained_queue_releases_large_buffers() {
        let mut queue = OutputQueue::default();
        queue.push(&frame(2 * RETAIN_CAPACITY, 1));
        queue.consume(queue.len());
        assert_eq!(queue.buf.capacity(), 0);

        queue.push(&frame(10, 1));
        queue.consume(queue.len());
        assert_eq!(
            queue.buf.capacity(),
            0,
            "a small buffer is not worth keeping"
        );

        queue.push(&frame(1000, 1));
        queue.consume(queue.len());
        assert!(queue.buf.capacity() > SMALL_CAPACITY && queue.buf.capacity() <= RETAIN_CAPACITY);
        queue.release();
        assert_eq!(queue.buf.capacity(), 0);
    }

    #[test]
    fn compaction_keeps_unsent_bytes_in_order() {
        let mut queue = OutputQueue::default();
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
        let mut queue = OutputQueue::default();
        let first = frame(1000, b'x');
        queue.push(&first);
        queue.push(&frame(1000, b'y'));
        queue.push(&frame(1000, b'z'));
        queue.consume(10);
        let dropped = queue.cut_after_current_frame();
        assert_eq!(dropped, 2 * first.len());
        assert_eq!(queue.front(usize::MAX), &first[10..]);
    }

    #[test]
    fn cut_at_a_frame_boundary_drops_everything() {
        let mut queue = OutputQueue::default();
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
        let mut queue = OutputQueue::default();
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
