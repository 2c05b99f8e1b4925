//! The online interface: the copier's XDP program and the readers that hand its frames to the
//! workers.
//!
//! Copy mode: the program copies matching frames into a ring buffer and passes every frame on;
//! one reader, a task on the first worker's runtime, drains the ring, woken by the program
//! when the ring turns non-empty and pausing between partial batches (`--coalesce-us`); as a
//! thread of its own it woke the worker for every batch. The ring (16 MiB) holds far more than
//! a worker's pass takes. Mirror mode: the program redirects matching frames into one AF_XDP
//! socket per RX queue, each drained by a reader thread of its own, so that the receive ring
//! keeps draining while the worker replays (docs/bench.md, "Design choices"); a jumbo frame
//! in several buffers comes through the ring, as in copy mode.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData, RingBuf, XskMap},
    programs::Xdp,
    Ebpf,
};
use common::{
    capture::CaptureRecord,
    counters::CopierCounter,
    encap::Decap,
    endpoint::Endpoint,
    maps::{
        CAPTURE, DECAP_GENEVE_PORT, DECAP_GRE, DECAP_VXLAN_PORT, MIRROR_ANSWERS, MIRROR_DROP_OTHER, ONLINE_ENDPOINTS,
        XSKS,
    },
};
use copier_engine::{capture::Link, mapping::Mappings};
use copier_user::runtime::{dispatch::Dispatch, worker::InputSender};
use tokio::io::unix::AsyncFd;
use xdp_runtime::{coalesce::Coalesce, counters::Counters, xsk_rx::RxSocket, Attached};

/// The eBPF object built from `copier-ebpf` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/copier"));

/// How long the ring reader waits on an empty ring. The XDP program wakes it with the record
/// that makes the ring non-empty ([`common::capture::wakes_reader`]); the timeout bounds the
/// delay when two CPUs fill an empty ring at once and neither wakes it, and how late the stop
/// flag is seen.
const RING_POLL: Duration = Duration::from_millis(10);
/// How long an AF_XDP reader waits in poll(2) before it looks at the stop flag.
const XSK_POLL_MS: i32 = 100;
/// `--coalesce-us`: a millisecond, and 2 Mpps for that long fits the AF_XDP receive ring (2048)
/// while its reader pauses. Replay does not need a captured frame within the millisecond.
pub const DEFAULT_COALESCE_US: u32 = 1000;

/// How the online interface is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnlineMode {
    /// A production NIC: copy, pass everything; with `answers`, also copy the online server's
    /// own segments as they leave (a TC egress program), to compare them.
    Copy { answers: bool },
    /// A NIC that receives only mirrored traffic: redirect matching frames into AF_XDP (the
    /// online server's own too with `answers`, to compare them); drop the rest (`drop_other`)
    /// or pass them.
    Mirror { drop_other: bool, answers: bool, decap: Decap },
}

/// `--decap`: `vxlan[:PORT]`, `geneve[:PORT]`, `gre`, comma-separated.
pub fn parse_decap(s: &str) -> Result<Decap, String> {
    let mut decap = Decap::default();
    for item in s.split(',').map(str::trim) {
        let (kind, port) = match item.split_once(':') {
            Some((kind, port)) => {
                let port = port.parse::<u16>().ok().filter(|&p| p != 0);
                (kind, Some(port.ok_or_else(|| format!("{item:?}: the port must be 1 to 65535"))?))
            }
            None => (item, None),
        };
        match kind {
            "vxlan" => decap.vxlan_port = port.unwrap_or(Decap::VXLAN_PORT),
            "geneve" => decap.geneve_port = port.unwrap_or(Decap::GENEVE_PORT),
            "gre" if port.is_none() => decap.gre = true,
            "gre" => return Err("gre has no port".into()),
            _ => return Err(format!("{item:?}: expected vxlan[:PORT], geneve[:PORT] or gre")),
        }
    }
    if decap.vxlan_port != 0 && decap.vxlan_port == decap.geneve_port {
        return Err("vxlan and geneve cannot share a port".into());
    }
    Ok(decap)
}

pub struct Capture {
    counters: Arc<Counters<CopierCounter>>,
    stop: Arc<AtomicBool>,
    /// Mirror mode's AF_XDP reader threads (the ring's reader is a task of the first worker).
    readers: Vec<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    // Last: dropping it detaches the program.
    _ebpf: Ebpf,
}

impl Capture {
    pub fn start(
        iface: &str,
        mappings: &Mappings,
        force: bool,
        mode: OnlineMode,
        coalesce_us: u32,
        workers: Vec<InputSender>,
        first_worker: &tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let (program_name, globals) = match mode {
            OnlineMode::Copy { .. } => ("copier", vec![]),
            OnlineMode::Mirror { drop_other, answers, decap } => (
                "copier_mirror",
                vec![
                    (MIRROR_DROP_OTHER, vec![u8::from(drop_other)]),
                    (MIRROR_ANSWERS, vec![u8::from(answers)]),
                    (DECAP_VXLAN_PORT, decap.vxlan_port.to_ne_bytes().to_vec()),
                    (DECAP_GENEVE_PORT, decap.geneve_port.to_ne_bytes().to_vec()),
                    (DECAP_GRE, vec![u8::from(decap.gre)]),
                ],
            ),
        };
        let globals: Vec<(&str, &[u8])> = globals.iter().map(|(name, bytes)| (*name, bytes.as_slice())).collect();
        let mut ebpf = xdp_runtime::load_with(EBPF_OBJECT, &globals, &[])?;
        xdp_runtime::forward_logs(&mut ebpf)?;
        {
            let map = ebpf.map_mut(ONLINE_ENDPOINTS).context("eBPF object has no online endpoint map")?;
            let mut online: HashMap<_, Endpoint, u8> = HashMap::try_from(map)?;
            for m in &mappings.0 {
                online.insert(m.online.key(), 1, 0).with_context(|| format!("adding online endpoint {}", m.online))?;
            }
        }
        let counters = Counters::<CopierCounter>::take(&mut ebpf)?;
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        let dispatch = || Dispatch::counting_into(workers.clone(), Arc::clone(&dropped));
        // The capture ring: copy mode's every frame, mirror mode's jumbo frames.
        let ring: RingBuf<MapData> =
            RingBuf::try_from(ebpf.take_map(CAPTURE).context("eBPF object has no capture ring")?)?;
        {
            let (stop, dispatch) = (Arc::clone(&stop), dispatch());
            let coalesce = Coalesce::from_micros(coalesce_us, copier_user::pcap::BATCH);
            // Stopped by the flag, or cancelled with the worker's runtime.
            drop(first_worker.spawn(read_ring(ring, dispatch, coalesce, stop)));
        }
        match mode {
            OnlineMode::Copy { .. } => {}
            OnlineMode::Mirror { .. } => {
                let mut xsks: XskMap<_> = XskMap::try_from(ebpf.map_mut(XSKS).context("eBPF object has no XSK map")?)?;
                let queues = xdp_runtime::xsk_rx::rx_queue_count(iface);
                for queue in 0..queues.min(common::maps::MAX_QUEUES) {
                    let socket = RxSocket::open(iface, queue)?;
                    xsks.set(queue, socket.fd(), 0)
                        .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))?;
                    log::info!(
                        "AF_XDP receive on {iface} queue {queue} ({})",
                        if socket.zero_copy { "zero-copy" } else { "copy mode" }
                    );
                    let (stop, dispatch) = (Arc::clone(&stop), dispatch());
                    let coalesce = Coalesce::from_micros(coalesce_us, xdp_runtime::xsk_rx::BATCH);
                    readers.push(
                        std::thread::Builder::new()
                            .name(format!("copier-xsk-{queue}"))
                            .spawn(move || read_xsk(socket, dispatch, coalesce, stop))?,
                    );
                }
            }
        }
        let program: &mut Xdp =
            ebpf.program_mut(program_name).context("eBPF object has no copier program")?.try_into()?;
        program.load().context("loading the copier XDP program (verifier)")?;
        let what = match mode {
            OnlineMode::Copy { .. } => "copy mode".to_owned(),
            OnlineMode::Mirror { drop_other, answers, decap } => format!(
                "mirror mode{}{}, other frames {}",
                if answers { " with production's answers" } else { "" },
                describe_decap(&decap),
                if drop_other { "dropped" } else { "passed" }
            ),
        };
        match xdp_runtime::attach(program, iface, force)? {
            Attached::Link => {
                log::info!("XDP program attached to {iface} in {what} (bpf_link: detached when this process exits)")
            }
            Attached::Netlink => log::warn!(
                "XDP program attached to {iface} in {what} through netlink (no bpf_link support): it is detached on \
                 SIGINT/SIGTERM, but not if this process is killed"
            ),
        }
        if let OnlineMode::Copy { answers: true } = mode {
            attach_answers(&mut ebpf, iface)?;
        }
        Ok(Self { counters: Arc::new(counters), stop, readers, dropped, _ebpf: ebpf })
    }

    /// The XDP counters, and frames the readers could not hand to a full worker queue.
    pub fn pairs(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        read_pairs(&self.counters, &self.dropped)
    }

    /// [`Self::pairs`], for another thread (the metrics server's).
    pub fn pairs_source(&self) -> impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static {
        let (counters, dropped) = (Arc::clone(&self.counters), Arc::clone(&self.dropped));
        move || read_pairs(&counters, &dropped).unwrap_or_default()
    }
}

/// `--decap`, for the log: ", inside VXLAN (UDP 4789), GRE".
fn describe_decap(decap: &Decap) -> String {
    let mut tunnels = Vec::new();
    if decap.vxlan_port != 0 {
        tunnels.push(format!("VXLAN (UDP {})", decap.vxlan_port));
    }
    if decap.geneve_port != 0 {
        tunnels.push(format!("GENEVE (UDP {})", decap.geneve_port));
    }
    if decap.gre {
        tunnels.push("GRE and ERSPAN".to_owned());
    }
    if tunnels.is_empty() {
        String::new()
    } else {
        format!(", inside {}", tunnels.join(", "))
    }
}

/// Attaches the TC egress program that copies production's answers (a tcx link: the kernel
/// detaches it when the link's descriptor closes, however this process ends).
fn attach_answers(ebpf: &mut Ebpf, iface: &str) -> anyhow::Result<()> {
    xdp_runtime::attach::attach_tc_egress(ebpf, "copier_answers", iface, "copier's TC egress program")?;
    log::info!("TC egress program attached to {iface} (tcx link): production's answers are copied, never altered");
    Ok(())
}

fn read_pairs(counters: &Counters<CopierCounter>, dropped: &AtomicU64) -> anyhow::Result<Vec<(&'static str, u64)>> {
    use common::counters::Counter as _;
    let values = counters.read()?;
    let mut pairs: Vec<_> = CopierCounter::ALL.iter().map(|c| c.name()).zip(values).collect();
    pairs.push(("queue_full", dropped.load(Ordering::Relaxed)));
    Ok(pairs)
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

async fn read_ring(ring: RingBuf<MapData>, mut dispatch: Dispatch, coalesce: Coalesce, stop: Arc<AtomicBool>) {
    // SAFETY: the ring owns its map's fd, which stays open and the same until it is dropped,
    // and the AsyncFd owns the ring.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
        Ok(ring) => ring,
        Err(err) => {
            log::error!("capture ring: cannot wait on it: {err}");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut taken = 0;
        // Every record of this pass was written before this.
        let now_us = xdp_runtime::cpu::monotonic_us();
        while taken < copier_user::pcap::BATCH {
            let Some(item) = ring.get_mut().next() else { break };
            if let Some((at, frame)) = CaptureRecord::frame(&item) {
                let at = common::capture::extend_stamp(at, now_us);
                if dispatch.push(at, Link::Ethernet, frame).is_err() {
                    return;
                }
            }
            taken += 1;
        }
        // Every pass ends the workers' batches: a frame waits at most one pass.
        if dispatch.flush().is_err() {
            return;
        }
        if taken == 0 {
            // Readiness is cleared only if no wake-up came after the one that set it (tokio
            // keeps the count): a record that arrived during the pass is not slept through.
            match tokio::time::timeout(RING_POLL, ring.readable()).await {
                Ok(Ok(mut ready)) => ready.clear_ready(),
                Ok(Err(err)) => {
                    log::error!("capture ring: waiting failed: {err}");
                    return;
                }
                Err(_) => {}
            }
        } else if let Some(pause) = coalesce.pause_after(taken) {
            tokio::time::sleep(pause).await;
        } else {
            // A full batch: let the worker take it before the next.
            tokio::task::yield_now().await;
        }
    }
}

fn read_xsk(mut socket: RxSocket, mut dispatch: Dispatch, coalesce: Coalesce, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut gone = false;
        // AF_XDP frames carry no time: a pass's frames share the time it took them (the
        // granularity of production's latencies in mirror mode is the reader's pause).
        let mut at = 0;
        let mut push = |frame: &[u8]| {
            if at == 0 {
                at = xdp_runtime::cpu::monotonic_us();
            }
            gone |= dispatch.push(at, Link::Ethernet, frame).is_err();
        };
        let received = match socket.receive(XSK_POLL_MS, &mut push) {
            Ok(n) => n,
            Err(err) => {
                log::error!("AF_XDP queue {}: poll failed: {err}", socket.queue);
                return;
            }
        };
        if gone || dispatch.flush().is_err() {
            return;
        }
        if let Some(pause) = coalesce.pause_after(received) {
            std::thread::sleep(pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decap_names_tunnels_and_their_ports() {
        let d = parse_decap("vxlan,gre").unwrap();
        assert_eq!((d.vxlan_port, d.geneve_port, d.gre), (4789, 0, true));
        let d = parse_decap("geneve:6082, vxlan:8472").unwrap();
        assert_eq!((d.vxlan_port, d.geneve_port, d.gre), (8472, 6082, false));
        for bad in ["", "vxlan:0", "vxlan:x", "gre:47", "ipip", "vxlan:6081,geneve"] {
            assert!(parse_decap(bad).is_err(), "{bad:?}");
        }
        assert_eq!(describe_decap(&parse_decap("vxlan,gre").unwrap()), ", inside VXLAN (UDP 4789), GRE and ERSPAN");
    }
}
