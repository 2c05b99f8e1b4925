//! `--tx xdp`: AF_XDP transmit on the interface towards the test server.
//!
//! The engine builds IP packets; this adds the Ethernet header (our MAC, the next hop's from the
//! kernel's neighbour table) and hands whole batches to the TX ring with one kick. Frames come
//! back through the completion ring. Route and neighbour lookups happen once per destination,
//! at start-up for the mapped targets, never per packet.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, UdpSocket},
    num::NonZeroU32,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use common::hash::Hasher;
use xsk_rs::{
    config::{FrameSize, QueueSize, UmemConfig},
    socket::{RxQueue, TxQueue},
    umem::{frame::FrameDesc, CompQueue, FillQueue, Umem},
};

use crate::{
    iface::{index as if_index, name as if_name},
    netlink, xsk,
};

/// UMEM frames per socket: as many as the TX ring holds. The kernel completes a copy-mode
/// kick's frames within the call, so more would only cost start-up (the UMEM is pinned page by
/// page: 16 MiB took 11 ms) and memory.
const FRAMES: u32 = 1024;
/// Bytes of one UMEM frame: half a page when the interface's MTU fits it (after the 256 bytes
/// of XDP headroom and the Ethernet header), else a page, the largest a frame may be without
/// multi-buffer AF_XDP. Half the UMEM is half its set-up: 0.7 ms of a start-up, not 1.5.
const FRAME_SIZES: [u32; 2] = [2048, 4096];
const RING: u32 = FRAMES;
const ETH_HLEN: usize = 14;
/// How long a device may take no frames before packets are dropped rather than waited for.
const STALL_LIMIT: Duration = Duration::from_millis(200);
/// The pause between kicks while the device takes no frames: never spin on a shared core
/// (docs/architecture.md §4).
const BUSY_WAIT: Duration = Duration::from_micros(20);
/// How long start-up waits for ARP/ND to resolve a next hop.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// The first pause before asking again, doubled each time up to the longest: an ARP answer on
/// a LAN takes well under a millisecond, and a flat 10 ms was half the copier's start-up.
const RESOLVE_FIRST_PAUSE: Duration = Duration::from_micros(50);
const RESOLVE_LONGEST_PAUSE: Duration = Duration::from_millis(10);

pub struct XdpTx {
    pub iface: String,
    if_index: u32,
    src_mac: [u8; 6],
    pub zero_copy: bool,
    /// The largest IP packet one frame carries: its data room less the Ethernet header.
    pub max_packet: usize,
    umem: Umem,
    free: Vec<FrameDesc>,
    batch: Vec<FrameDesc>,
    completed: Vec<FrameDesc>,
    macs: HashMap<IpAddr, [u8; 6], Hasher>,
    tx: TxQueue,
    completion: CompQueue,
    // Kept alive with the socket; this socket never receives.
    _rx: RxQueue,
    _fill: FillQueue,
    /// Packets not sent (no frame free, unresolvable next hop, oversized).
    pub errors: u64,
    pub last_error: Option<String>,
}

/// The next hop's MAC for `dst` through `if_index`, asking the kernel to resolve it if needed.
fn resolve(if_index: u32, dst: IpAddr, wait: Duration) -> anyhow::Result<[u8; 6]> {
    let route = netlink::route_to(dst).with_context(|| format!("looking up the route to {dst}"))?;
    if route.if_index != if_index {
        bail!(
            "the route to {dst} leaves through {} , not the AF_XDP interface {}",
            if_name(route.if_index)?,
            if_name(if_index)?
        );
    }
    let hop = route.next_hop(dst);
    let deadline = Instant::now() + wait;
    let mut provoked = false;
    let mut pause = RESOLVE_FIRST_PAUSE;
    loop {
        if let Some(mac) = netlink::neighbour(if_index, hop)? {
            return Ok(mac);
        }
        if !provoked {
            // A datagram to the discard port makes the kernel resolve the neighbour.
            let bind = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            if let Ok(s) = UdpSocket::bind(bind) {
                let _ = s.send_to(b"", (dst, 9));
            }
            provoked = true;
        }
        if Instant::now() >= deadline {
            bail!(
                "cannot resolve the MAC of next hop {hop} on {}: no ARP/ND answer within {wait:?}",
                if_name(if_index)?
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(RESOLVE_LONGEST_PAUSE);
    }
}

/// The UMEM of the smallest frame that holds a frame of an interface with this MTU.
fn umem_config(mtu: u32) -> anyhow::Result<UmemConfig> {
    let mut config = None;
    for size in FRAME_SIZES {
        let c = UmemConfig::builder()
            .frame_size(FrameSize::new(size)?)
            .fill_queue_size(QueueSize::new(64)?)
            .comp_queue_size(QueueSize::new(FRAMES)?)
            .build()?;
        let fits = c.mtu() as usize >= mtu as usize + ETH_HLEN;
        config = Some(c);
        if fits {
            break;
        }
    }
    Ok(config.expect("FRAME_SIZES is not empty"))
}

impl XdpTx {
    /// Opens AF_XDP transmit on TX queue `queue` towards `targets` on `iface` (default: the
    /// route to the first target), resolving every target's next hop before replay starts.
    /// One socket per queue: each worker has a queue of its own.
    pub fn open(iface: Option<&str>, targets: &[IpAddr], queue: u32) -> anyhow::Result<Self> {
        let first = *targets.first().context("no target")?;
        let if_index = match iface {
            Some(name) => if_index(name)?,
            None => netlink::route_to(first).with_context(|| format!("looking up the route to {first}"))?.if_index,
        };
        let iface = if_name(if_index)?;
        let queues = crate::xsk_rx::tx_queue_count(&iface);
        if queue >= queues {
            bail!("{iface} has {queues} TX queue(s); worker {queue} needs a queue of its own (fewer --workers, or --tx raw)");
        }
        let src_mac = netlink::link_address(if_index)?
            .with_context(|| format!("{iface} has no MAC address (not an Ethernet link?)"))?;
        let mut macs = HashMap::default();
        for &t in targets {
            macs.insert(t, resolve(if_index, t, RESOLVE_WAIT)?);
        }
        let mtu = netlink::link_mtu(if_index).with_context(|| format!("reading {iface}'s MTU"))?;
        let umem_config = umem_config(mtu)?;
        let max_packet = umem_config.mtu() as usize - ETH_HLEN;
        let (umem, frames) = Umem::new(umem_config, NonZeroU32::new(FRAMES).expect("non-zero"), false)
            .context("creating the TX UMEM")?;
        let xsk::Bound { zero_copy, tx, rx, fill, completion } =
            xsk::bind(&umem, &iface, queue, 64, RING).context("opening AF_XDP transmit")?;
        Ok(Self {
            iface,
            if_index,
            src_mac,
            zero_copy,
            max_packet,
            umem,
            free: frames,
            batch: Vec::with_capacity(RING as usize),
            completed: vec![FrameDesc::default(); RING as usize],
            macs,
            tx,
            completion,
            _rx: rx,
            _fill: fill,
            errors: 0,
            last_error: None,
        })
    }

    fn reclaim(&mut self) {
        // SAFETY: descriptors in the completion ring are frames we sent; the kernel is done.
        let n = unsafe { self.completion.consume(&mut self.completed) };
        self.free.extend_from_slice(&self.completed[..n]);
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.last_error = Some(why);
    }

    /// Sends every packet in one batch (one kick); failures are counted, not fatal.
    pub fn send<'a>(&mut self, packets: impl Iterator<Item = &'a [u8]>) {
        self.reclaim();
        self.batch.clear();
        for p in packets {
            let dst = match p.first().map(|b| b >> 4) {
                Some(4) if p.len() >= 20 => IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).expect("4 bytes")),
                Some(6) if p.len() >= 40 => IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).expect("16 bytes")),
                _ => {
                    self.fail("not an IP packet".into());
                    continue;
                }
            };
            let mac = match self.macs.get(&dst) {
                Some(mac) => *mac,
                // A destination not resolved at start-up: one short lookup, then cached.
                None => match resolve(self.if_index, dst, Duration::from_millis(200)) {
                    Ok(mac) => *self.macs.entry(dst).or_insert(mac),
                    Err(e) => {
                        self.fail(e.to_string());
                        continue;
                    }
                },
            };
            if p.len() > self.max_packet {
                // Checked before a frame is taken: a partly written frame would keep its length.
                self.fail(format!("a {}-byte packet does not fit an AF_XDP frame", p.len() + ETH_HLEN));
                continue;
            }
            if self.batch.len() == RING as usize || self.free.is_empty() {
                // A burst larger than the ring or the UMEM (thousands of SYNs at once): send
                // what is written, then reuse the frames the kernel completed.
                self.submit();
                self.await_frames();
            }
            let Some(mut desc) = self.free.pop() else {
                self.fail(format!("AF_XDP TX: no frame completed within {STALL_LIMIT:?} (the device takes none)"));
                continue;
            };
            let ethertype: u16 = if dst.is_ipv4() { 0x0800 } else { 0x86dd };
            // SAFETY: `desc` is a free frame of our UMEM, not in any ring.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            let written = cursor
                .write_all(&mac)
                .and_then(|_| cursor.write_all(&self.src_mac))
                .and_then(|_| cursor.write_all(&ethertype.to_be_bytes()))
                .and_then(|_| cursor.write_all(p));
            written.expect("a packet within max_packet fits its frame");
            self.batch.push(desc);
        }
        self.submit();
    }

    /// Puts the batch on the TX ring and has the kernel send it. A full ring is waited for
    /// (the device is momentarily busy: a veth peer's backlog, a NIC's queue), not dropped;
    /// only a device that takes nothing for [`STALL_LIMIT`] costs packets.
    fn submit(&mut self) {
        let mut done = 0;
        let mut stalled_since = None;
        while done < self.batch.len() {
            // The ring takes a batch whole or not at all: offer what fits.
            let room = (self.tx.nb_free_exact() as usize).min(self.batch.len() - done);
            // SAFETY: every descriptor in the batch is a frame we own and just wrote.
            let n = unsafe { self.tx.produce(&self.batch[done..done + room]) };
            done += n;
            self.drain();
            if n > 0 {
                stalled_since = None;
                continue;
            }
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= STALL_LIMIT {
                break;
            }
            self.wait_writable();
        }
        if done < self.batch.len() {
            let unsent = self.batch.len() - done;
            self.free.extend_from_slice(&self.batch[done..]);
            self.errors += unsent as u64;
            self.last_error =
                Some(format!("AF_XDP TX ring stayed full for {STALL_LIMIT:?} (the device takes no frames)"));
        }
        self.batch.clear();
    }

    /// With every frame in flight, waits (bounded) for the kernel to complete some.
    fn await_frames(&mut self) {
        self.reclaim();
        let start = Instant::now();
        while self.free.is_empty() && start.elapsed() < STALL_LIMIT {
            self.drain();
            self.wait_writable();
            self.reclaim();
        }
    }

    /// A short pause between kicks while the device is busy: poll(2)'s millisecond is too long
    /// a wait here, and a spin would take the core the receiving side needs.
    fn wait_writable(&self) {
        std::thread::sleep(BUSY_WAIT);
    }

    /// Copy mode transmits at most 32 frames per kick (the kernel's TX_BATCH_SIZE) and leaves
    /// the rest on the ring: kick until the ring is empty, one syscall per 32 frames, so a
    /// burst (thousands of SYNs at once) leaves now instead of filling the ring. Bounded: a
    /// device that stops taking frames ends it.
    fn drain(&mut self) {
        for _ in 0..RING / 32 + 2 {
            if self.tx.nb_free_exact() >= RING {
                return;
            }
            if self.tx.wakeup().is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_half_a_page_when_the_interfaces_mtu_fits_it() {
        for (mtu, frame) in [(1500, 2048), (1778, 2048), (1779, 4096), (3000, 4096), (9000, 4096)] {
            let config = umem_config(mtu).unwrap();
            assert_eq!(config.mtu() + XDP_HEADROOM, frame, "MTU {mtu}");
            if frame == 2048 {
                assert!(config.mtu() as usize - ETH_HLEN >= mtu as usize, "MTU {mtu}: a full frame fits");
            }
        }
    }

    /// What the kernel keeps in front of every frame.
    const XDP_HEADROOM: u32 = 256;
}
