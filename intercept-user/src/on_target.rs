//! The intercept on the test host itself (`--on-target`), with no assistant host: a TC egress
//! program (a tcx link) copies each reply to an owned client endpoint into a ring buffer and
//! drops it before it leaves; one thread reads the ring and routes the facts (on an assistant
//! host the same reader takes the jumbo replies the XDP program copies there).
//!
//! Which endpoints are owned is the server's table, mirrored into the program's map
//! ([`OwnedMap`]) before each announcement is answered, so a copier that waits for SYNCED
//! before it sends a session's SYN finds its replies stolen.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData, RingBuf},
    Ebpf,
};
use common::{
    capture::CaptureRecord,
    endpoint::Endpoint,
    maps::{CAPTURE, OWNED_CLIENTS},
};
use intercept_core::stealing::StolenSet;
use xdp_runtime::{coalesce::Coalesce, xsk_rx::BATCH};

use crate::{replies::Batch, server::SharedRoutes, stats::Stats};

/// How quickly the reader notices shutdown when no reply arrives.
const POLL_MS: i32 = 100;

/// The program's map of owned client endpoints.
pub struct OwnedMap(HashMap<MapData, Endpoint, u8>);

impl OwnedMap {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(OWNED_CLIENTS).context("eBPF object has no owned-clients map")?;
        Ok(Self(HashMap::try_from(map)?))
    }
}

impl StolenSet for OwnedMap {
    fn insert(&mut self, client: Endpoint) -> std::io::Result<()> {
        self.0.insert(client, 1, 0).map_err(std::io::Error::other)
    }

    fn remove(&mut self, client: Endpoint) {
        // Absent already is fine: a whole address and its ports are separate keys.
        let _ = self.0.remove(&client);
    }
}

/// Loads and attaches the egress program to `iface` (a tcx link: detached however this
/// process ends).
pub fn attach(ebpf: &mut Ebpf, iface: &str) -> anyhow::Result<()> {
    xdp_runtime::attach::attach_tc_egress(ebpf, "intercept_egress", iface, "intercept's TC egress program")
}

/// Takes the ring and starts its reader on `core`; it runs until `stop` is set.
pub fn spawn_reader(
    ebpf: &mut Ebpf,
    core: usize,
    coalesce: Coalesce,
    routes: SharedRoutes,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut ring: RingBuf<MapData> =
        RingBuf::try_from(ebpf.take_map(CAPTURE).context("eBPF object has no capture ring")?)?;
    std::thread::Builder::new()
        .name("capture-ring".into())
        .spawn(move || {
            xdp_runtime::pin_to(core);
            let mut batch = Batch::default();
            while !stop.load(Ordering::Relaxed) {
                batch.start(&stats);
                let mut taken = 0;
                while taken < BATCH {
                    let Some(item) = ring.next() else { break };
                    match CaptureRecord::frame(&item) {
                        Some((at, frame)) => batch.push(frame, Some(at)),
                        None => batch.push(&[], None),
                    }
                    taken += 1;
                }
                batch.route(&routes, &stats);
                if taken == 0 {
                    if let Err(err) = wait_readable(ring.as_fd().as_raw_fd()) {
                        log::error!("capture ring: poll failed: {err}");
                        break;
                    }
                } else if let Some(pause) = coalesce.pause_after(taken) {
                    std::thread::sleep(pause);
                }
            }
        })
        .context("starting the capture ring reader")
}

/// Sleeps until the ring has a record or [`POLL_MS`] pass. A record that came after the
/// last look is not slept through: poll(2) looks at the ring before it sleeps.
fn wait_readable(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the call's duration.
    let ret = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    match ret {
        -1 => match std::io::Error::last_os_error() {
            err if err.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            err => Err(err),
        },
        _ => Ok(()),
    }
}
