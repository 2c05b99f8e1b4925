//! AF_XDP receive on one RX queue: the intercept's path for replies and the copier's for
//! mirror mode.
//!
//! The caller's loop polls when the ring is empty (need_wakeup, so no busy spinning on a core
//! the kernel's receive work shares), takes up to [`BATCH`] frames at once, and every frame
//! goes straight back to the fill ring after the caller has looked at it. Nothing is allocated
//! or syscalled per packet.

use std::{
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
};

use anyhow::Context as _;
use xsk_rs::{
    config::{QueueSize, UmemConfig},
    socket::{RxQueue, TxQueue},
    umem::{frame::FrameDesc, CompQueue, FillQueue, Umem},
};

/// Frames taken from the RX ring at once. Each pass hands its frames on (to a copier worker,
/// to the intercept's router), and waking the receiver costs more than 64 frames' work.
pub const BATCH: usize = 256;
/// Frames ahead of the one being looked at whose headers are loaded into the cache meanwhile.
const PREFETCH_AHEAD: usize = 4;
/// A frame's bytes that its reader looks at: Ethernet, IPv6 and TCP headers with options (a
/// TCP timestamp is past the first cache line). Reading them took a fifth of the intercept's
/// reply thread at maximum replay speed, nearly all of it waiting for memory.
const FRAME_HEADERS: usize = 128;
/// UMEM frames; all of them start in the fill ring, which is sized to hold them.
const FRAMES: u32 = 4096;
const RX_RING: u32 = 2048;

/// An AF_XDP socket bound to one RX queue, with its UMEM and rings.
pub struct RxSocket {
    pub queue: u32,
    pub zero_copy: bool,
    umem: Umem,
    rx: RxQueue,
    fill: FillQueue,
    batch: [FrameDesc; BATCH],
    // Kept alive with the socket; it never transmits.
    _tx: TxQueue,
    _completion: CompQueue,
}

impl RxSocket {
    /// Binds a socket to `iface`'s RX queue `queue`, zero-copy if the driver allows, else copy
    /// mode. Our own XDP program redirects into it (libxdp's default program is not loaded).
    pub fn open(iface: &str, queue: u32) -> anyhow::Result<Self> {
        let fill_size = QueueSize::new(FRAMES)?;
        let umem_config =
            UmemConfig::builder().fill_queue_size(fill_size).comp_queue_size(QueueSize::new(64)?).build()?;
        let (umem, frames) =
            Umem::new(umem_config, NonZeroU32::new(FRAMES).expect("non-zero"), false).context("creating the UMEM")?;
        let crate::xsk::Bound { zero_copy, tx, rx, mut fill, completion } =
            crate::xsk::bind(&umem, iface, queue, RX_RING, 64)?;
        // SAFETY: every frame is ours and none is in any ring yet.
        let filled = unsafe { fill.produce(&frames) };
        anyhow::ensure!(filled == frames.len(), "could only put {filled} of {} frames in the fill ring", frames.len());
        let batch = [FrameDesc::default(); BATCH];
        Ok(Self { queue, zero_copy, umem, rx, fill, batch, _tx: tx, _completion: completion })
    }

    /// The socket's fd, for the XSK map.
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Takes the frames waiting, or waits up to `timeout_ms` for some; shows each of up to
    /// [`BATCH`] of them to `f`, and returns them to the kernel. Returns how many there were.
    pub fn receive(&mut self, timeout_ms: i32, mut f: impl FnMut(&[u8])) -> std::io::Result<usize> {
        // SAFETY: frames come from this socket's UMEM and go back to its fill ring before
        // their descriptors are reused.
        let mut received = unsafe { self.rx.consume(&mut self.batch) };
        if received == 0 {
            // Only an empty ring needs poll(2): after a coalescing pause frames are usually
            // waiting, and the syscall was 12–16 % of the intercept's reply thread at recorded
            // pace.
            // SAFETY: as above.
            received = unsafe { self.rx.poll_and_consume(&mut self.batch, timeout_ms)? };
        }
        if received == 0 {
            return Ok(0);
        }
        let batch = &self.batch[..received];
        let prefetch = |desc| {
            // SAFETY: consumed from our RX ring with this batch.
            let data = unsafe { self.umem.data(desc) };
            common::prefetch::lines(data.contents().as_ptr(), FRAME_HEADERS);
        };
        batch.iter().take(PREFETCH_AHEAD).for_each(prefetch);
        for (i, desc) in batch.iter().enumerate() {
            if let Some(ahead) = batch.get(i + PREFETCH_AHEAD) {
                prefetch(ahead);
            }
            // SAFETY: the descriptor was just consumed from our RX ring.
            let data = unsafe { self.umem.data(desc) };
            f(data.contents());
        }
        // SAFETY: we are done with these frames.
        let mut returned = unsafe { self.fill.produce(&self.batch[..received]) };
        while returned < received {
            // The fill ring is sized for every frame, so this only waits for the kernel.
            std::thread::yield_now();
            // SAFETY: as above.
            returned += unsafe { self.fill.produce(&self.batch[returned..received]) };
        }
        if self.fill.needs_wakeup() {
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
        Ok(received)
    }
}

/// The RX queues of `iface` (from sysfs; at least 1).
pub fn rx_queue_count(iface: &str) -> u32 {
    queue_count(iface, "rx-")
}

/// The TX queues of `iface` (from sysfs; at least 1).
pub fn tx_queue_count(iface: &str) -> u32 {
    queue_count(iface, "tx-")
}

fn queue_count(iface: &str, prefix: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count() as u32)
        .unwrap_or(1)
        .max(1)
}
