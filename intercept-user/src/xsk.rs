//! AF_XDP receive: one socket per RX queue, one pinned worker thread per socket.
//!
//! Each worker polls its RX ring (need_wakeup, so no busy spinning on a core the kernel's
//! receive work shares), takes up to [`BATCH`] frames at once, reduces them to facts, hands the
//! frames straight back to the fill ring, and sends the whole batch to the router in one
//! message. Nothing is allocated, locked or syscalled per packet.

use std::{
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use common::facts::ReplyFacts;
use tokio::sync::mpsc;
use xsk_rs::{
    config::{BindFlags, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    socket::{RxQueue, Socket, TxQueue},
    umem::{frame::FrameDesc, CompQueue, FillQueue, Umem},
};

use crate::stats::Stats;

/// Frames taken from the RX ring at once.
pub const BATCH: usize = 64;
/// UMEM frames; all of them start in the fill ring, which is sized to hold them.
const FRAMES: u32 = 4096;
const RX_RING: u32 = 2048;
/// Poll timeout: how quickly a worker notices shutdown when no traffic arrives.
const POLL_MS: i32 = 100;

/// An AF_XDP socket bound to one RX queue, with its UMEM and rings.
pub struct QueueSocket {
    pub queue: u32,
    pub zero_copy: bool,
    umem: Umem,
    rx: RxQueue,
    fill: FillQueue,
    // Kept alive with the socket; the intercept never transmits.
    _tx: TxQueue,
    _completion: CompQueue,
}

impl QueueSocket {
    /// Binds a socket to `iface`'s RX queue `queue`, zero-copy if the driver allows, else copy
    /// mode. Our own XDP program redirects into it (libxdp's default program is not loaded).
    pub fn open(iface: &str, queue: u32) -> anyhow::Result<Self> {
        let fill_size = QueueSize::new(FRAMES)?;
        let umem_config = UmemConfig::builder().fill_queue_size(fill_size).comp_queue_size(QueueSize::new(64)?).build()?;
        let (umem, frames) =
            Umem::new(umem_config, NonZeroU32::new(FRAMES).expect("non-zero"), false).context("creating the UMEM")?;
        let name: Interface = iface.parse().context("interface name")?;
        let bind = |extra: BindFlags| {
            let config = SocketConfig::builder()
                .rx_queue_size(QueueSize::new(RX_RING).expect("power of two"))
                .tx_queue_size(QueueSize::new(64).expect("power of two"))
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | extra)
                .build();
            // SAFETY: the UMEM outlives the socket: both live in the returned QueueSocket.
            unsafe { Socket::new(config, &umem, &name, queue) }
        };
        let (zero_copy, (tx, rx, rings)) = match bind(BindFlags::XDP_ZEROCOPY) {
            Ok(socket) => (true, socket),
            Err(zc_err) => {
                log::debug!("{iface} queue {queue}: zero-copy bind failed ({zc_err}); using copy mode");
                (false, bind(BindFlags::XDP_COPY).with_context(|| format!("binding an AF_XDP socket to {iface} queue {queue}"))?)
            }
        };
        let (mut fill, completion) = rings.context("the socket came without fill and completion rings")?;
        // SAFETY: every frame is ours and none is in any ring yet.
        let filled = unsafe { fill.produce(&frames) };
        anyhow::ensure!(filled == frames.len(), "could only put {filled} of {} frames in the fill ring", frames.len());
        Ok(Self { queue, zero_copy, umem, rx, fill, _tx: tx, _completion: completion })
    }

    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

/// The RX queues of `iface` (from sysfs; at least 1).
pub fn rx_queue_count(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count() as u32)
        .unwrap_or(1)
        .max(1)
}

/// Pins the calling thread to `core` (best effort: a failure is logged, not fatal).
fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            log::warn!("could not pin a worker to core {core}: {}", std::io::Error::last_os_error());
        }
    }
}

/// Cores this process may run on, in order.
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Starts the worker for `socket` on `core`. It runs until `stop` is set.
pub fn spawn_worker(
    mut socket: QueueSocket,
    core: usize,
    to_router: mpsc::Sender<Vec<ReplyFacts>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("xsk-rx-{}", socket.queue))
        .spawn(move || {
            pin_to(core);
            let mut batch = [FrameDesc::default(); BATCH];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: frames come from this socket's UMEM and go back to its fill ring
                // before their descriptors are reused.
                let received = match unsafe { socket.rx.poll_and_consume(&mut batch, POLL_MS) } {
                    Ok(n) => n,
                    Err(err) => {
                        log::error!("AF_XDP queue {}: poll failed: {err}", socket.queue);
                        break;
                    }
                };
                if received == 0 {
                    continue;
                }
                let mut facts = Vec::with_capacity(received);
                let mut unparsed = 0;
                for desc in &batch[..received] {
                    // SAFETY: the descriptor was just consumed from our RX ring.
                    let data = unsafe { socket.umem.data(desc) };
                    match ReplyFacts::from_frame(data.contents()) {
                        Ok(Some(f)) => facts.push(f),
                        _ => unparsed += 1,
                    }
                }
                // SAFETY: we are done with these frames.
                let mut returned = unsafe { socket.fill.produce(&batch[..received]) };
                while returned < received && !stop.load(Ordering::Relaxed) {
                    // The fill ring is sized for every frame, so this only waits for the kernel.
                    std::thread::yield_now();
                    returned += unsafe { socket.fill.produce(&batch[returned..received]) };
                }
                if socket.fill.needs_wakeup() {
                    let _ = socket.fill.wakeup(socket.rx.fd_mut(), 0);
                }
                Stats::add(&stats.replies, facts.len() as u64);
                Stats::add(&stats.unparsed, unparsed);
                let n = facts.len() as u64;
                if !facts.is_empty() && to_router.try_send(facts).is_err() {
                    Stats::add(&stats.backlog_dropped, n);
                }
            }
        })
        .context("starting an AF_XDP worker thread")
}
