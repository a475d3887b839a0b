//! Giving memory back: once a burst of output has drained, the allocator returns the freed
//! queue buffers to the system, so RSS goes back near its baseline (SPEC §6).
//!
//! Owns when to trim. Must not run per message or per turn: it acts once per burst, after the
//! queues have drained to an eighth of their peak.

use log::debug;

use super::Server;

/// Bursts below this peak are not worth a trim: the allocator keeps that much for the next one.
/// Well above what a busy hub queues between two write passes (about 11 MiB with 1 000 clients
/// and 160 messages in flight), because trimming pages that the next pass faults back in would
/// cost every pass.
const TRIM_WORTH: usize = 64 << 20;

impl Server {
    /// Returns freed memory to the system when a burst worth it has drained.
    pub(super) fn give_back_memory(&mut self) {
        if let Some(peak) = self.table.take_drained_peak(TRIM_WORTH) {
            debug!("output drained from a {peak}-byte peak; returning freed memory");
            trim();
        }
    }
}

/// glibc keeps freed chunks in its heap (the queues of a burst end up scattered among live
/// allocations, so the heap top rarely frees itself); `malloc_trim` hands every free page back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return large freed blocks on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
