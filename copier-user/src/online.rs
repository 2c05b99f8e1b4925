//! Copy mode on the online interface: the XDP program copies matching frames into a ring
//! buffer (and passes every frame on); a reader thread drains the ring about every 50 µs and
//! hands the frames to the worker in batches.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::Xdp,
    Ebpf,
};
use common::{
    capture::CaptureRecord,
    counters::CopierCounter,
    endpoint::Endpoint,
    maps::{CAPTURE, ONLINE_ENDPOINTS},
};
use copier_user::{
    engine::capture::Link,
    mapping::Mappings,
    pcap::{Batch, BATCH},
    runtime::worker::Input,
};
use xdp_runtime::{counters::Counters, Attached};

/// The eBPF object built from `copier-ebpf` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/copier"));

/// How long the reader sleeps on an empty ring (never a busy spin: DESIGN.md §4).
const POLL: Duration = Duration::from_micros(50);

pub struct Capture {
    counters: Counters<CopierCounter>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    // Last: dropping it detaches the program.
    _ebpf: Ebpf,
}

impl Capture {
    pub fn start(iface: &str, mappings: &Mappings, force: bool, inputs: SyncSender<Input>) -> anyhow::Result<Self> {
        let mut ebpf = xdp_runtime::load(EBPF_OBJECT)?;
        xdp_runtime::forward_logs(&mut ebpf)?;
        {
            let map = ebpf.map_mut(ONLINE_ENDPOINTS).context("eBPF object has no online endpoint map")?;
            let mut online: HashMap<_, Endpoint, u8> = HashMap::try_from(map)?;
            for m in &mappings.0 {
                online.insert(m.online.key(), 1, 0).with_context(|| format!("adding online endpoint {}", m.online))?;
            }
        }
        let counters = Counters::<CopierCounter>::take(&mut ebpf)?;
        let ring: RingBuf<MapData> = RingBuf::try_from(ebpf.take_map(CAPTURE).context("eBPF object has no capture ring")?)?;
        let program: &mut Xdp = ebpf.program_mut("copier").context("eBPF object has no copier program")?.try_into()?;
        program.load().context("loading the copier XDP program (verifier)")?;
        match xdp_runtime::attach(program, iface, force)? {
            Attached::Link => log::info!("XDP program attached to {iface} in copy mode (bpf_link: detached when this process exits)"),
            Attached::Netlink => log::warn!(
                "XDP program attached to {iface} through netlink (no bpf_link support): it is detached on SIGINT/SIGTERM, \
                 but not if this process is killed"
            ),
        }
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let (stop, dropped) = (Arc::clone(&stop), Arc::clone(&dropped));
            std::thread::Builder::new().name("copier-capture".into()).spawn(move || read(ring, inputs, stop, dropped))?
        };
        Ok(Self { counters, stop, reader: Some(reader), dropped, _ebpf: ebpf })
    }

    /// The XDP counters, and frames the reader could not hand to a full worker queue.
    pub fn pairs(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        use common::counters::Counter as _;
        let values = self.counters.read()?;
        let mut pairs: Vec<_> = CopierCounter::ALL.iter().map(|c| c.name()).zip(values).collect();
        pairs.push(("queue_full", self.dropped.load(Ordering::Relaxed)));
        Ok(pairs)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn read(mut ring: RingBuf<MapData>, inputs: SyncSender<Input>, stop: Arc<AtomicBool>, dropped: Arc<std::sync::atomic::AtomicU64>) {
    let mut batch = Batch::default();
    while !stop.load(Ordering::Relaxed) {
        while batch.len() < BATCH {
            let Some(item) = ring.next() else { break };
            if let Some(frame) = CaptureRecord::frame(&item) {
                batch.push(0, Link::Ethernet, frame);
            }
        }
        if batch.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        let n = batch.len() as u64;
        match inputs.try_send(Input::Captured(std::mem::take(&mut batch))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                dropped.fetch_add(n, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}
