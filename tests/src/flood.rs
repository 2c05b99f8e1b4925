//! The bench's traffic generator (this kernel has no pktgen): minimal TCP frames, transmitted
//! through AF_XDP (the copier's own transmit path) or a raw IP socket, at a paced rate or as
//! fast as the path takes them. Call inside [`crate::Netns::run`].

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use common::tcp::flags::{ACK, RST};
use xdp_runtime::{
    tx::{RawTx, Transmit},
    xdp_tx::XdpTx,
};

use crate::raw::ipv4_tcp;

/// Frames per transmit call (one kick or one `sendmmsg`).
const BATCH: usize = 64;
/// Distinct flows in the pattern (source ports), so flow hashing has something to spread.
const FLOWS: u16 = 4096;

/// How frames leave the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    AfXdp,
    Raw,
}

/// What one flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flooded {
    /// Frames handed to the interface.
    pub sent: u64,
    /// Frames the transmit path refused.
    pub errors: u64,
    pub seconds: f64,
    /// CPU the generator's thread spent transmitting, user and system. Its frames are built
    /// beforehand, so this is the transmit path: copying into the UMEM or `sendmmsg`, and the
    /// kernel's part, which the copier pays per replayed frame too.
    pub cpu_us: u64,
}

impl Flooded {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    /// The sender's CPU per frame handed over, in microseconds.
    pub fn cpu_us_per_frame(&self) -> f64 {
        self.cpu_us as f64 / self.sent.max(1) as f64
    }
}

/// 40-byte TCP resets from `src` (ports 20000 and up) to `dst`: 54 bytes on the wire with
/// Ethernet, the smallest TCP frame. A reset of no connection is dropped by the receiving stack
/// without an answer, so the flood costs the receiver its receive path and nothing else.
pub fn resets(src: Ipv4Addr, dst: (Ipv4Addr, u16)) -> Vec<Vec<u8>> {
    (0..FLOWS).map(|i| ipv4_tcp((src, 20_000 + i), dst, 1_000 + u32::from(i), 1, RST | ACK, &[], &[])).collect()
}

/// Sends `frames` round-robin for `duration` through `path` (AF_XDP on `iface`), paced to
/// `rate` frames per second, or unpaced when `rate` is `None`.
pub fn flood(
    path: Path,
    iface: &str,
    frames: &[Vec<u8>],
    rate: Option<u64>,
    duration: Duration,
) -> anyhow::Result<Flooded> {
    let dst = IpAddr::from(<[u8; 4]>::try_from(&frames[0][16..20]).expect("an IPv4 packet"));
    let mut tx = match path {
        Path::AfXdp => Transmit::Xdp(Box::new(XdpTx::open(Some(iface), &[dst], 0)?)),
        Path::Raw => Transmit::Raw(RawTx::open()?),
    };
    // The generator keeps to the last core (with the receive path, when veth runs that inside
    // the sender's transmit call); the copier's first worker is pinned to the first.
    if let Some(&last) = xdp_runtime::cpu::allowed_cores().last() {
        xdp_runtime::cpu::pin_to(last);
    }
    let (start, cpu_start) = (Instant::now(), xdp_runtime::cpu::thread_cpu_us());
    let (mut offered, mut next) = (0u64, 0usize);
    while start.elapsed() < duration {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(offered as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                // Sleep off most of the gap; never spin on a core the receiver may need.
                std::thread::sleep(due - now);
            }
        }
        let end = (next + BATCH).min(frames.len());
        tx.send(frames[next..end].iter().map(Vec::as_slice));
        offered += (end - next) as u64;
        next = if end == frames.len() { 0 } else { end };
    }
    let (seconds, cpu_us) = (start.elapsed().as_secs_f64(), xdp_runtime::cpu::thread_cpu_us() - cpu_start);
    let errors = tx.errors();
    Ok(Flooded { sent: offered - errors, errors, seconds, cpu_us })
}
