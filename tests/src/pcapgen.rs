//! Generated captures for the bench: many HTTP client sessions, client side only (what a
//! capture on the production host's client link holds), as a classic pcap of raw IP packets
//! (written with the same pcap crate the copier reads with).

use std::{io::Write as _, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::Context as _;
use common::tcp::flags::{ACK, FIN, PSH, SYN};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};

use crate::raw::{ipv4_tcp, linux_syn_options};

/// The online server's ISN the generated clients acknowledge.
const ONLINE_ISN: u32 = 1_000_000;
/// Response bytes each generated request acknowledges: the engine paces the next request on
/// the test server's answer, and any answer is at least this long.
const RESPONSE: u32 = 1;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct Sessions {
    pub count: u32,
    pub requests_per_session: u32,
    /// Between session starts in the capture.
    pub gap_us: u64,
}

impl Sessions {
    pub fn requests(&self) -> u64 {
        self.count as u64 * self.requests_per_session as u64
    }
}

/// Client endpoint of session `i`: 10.100.1.10 and up, 50 000 ports each (in the client network
/// the test bed's test server routes through the assistant host).
pub fn client(i: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(10, 100, 1, 10 + (i / 50_000) as u8), 10_000 + (i % 50_000) as u16)
}

/// Writes the sessions to `path`: handshake, `GET /bench/SESSION/REQUEST` requests each after
/// the previous answer, then the client's FIN.
pub fn write_http_sessions(path: &Path, server: (Ipv4Addr, u16), spec: Sessions) -> anyhow::Result<()> {
    write_sessions(path, server, spec, DataLink::RAW, false)
}

/// [`write_http_sessions`] with every client port used twice: session `2k + 1` is a new
/// connection (another ISN) from session `2k`'s address and port, half a gap after it, while
/// its predecessor still lingers in TIME_WAIT.
pub fn write_http_sessions_reusing_ports(path: &Path, server: (Ipv4Addr, u16), spec: Sessions) -> anyhow::Result<()> {
    write_sessions(path, server, spec, DataLink::RAW, true)
}

/// [`write_http_sessions`] as Ethernet frames, as tcpdump on an Ethernet link writes them (the
/// original tcpcopy replays nothing else).
pub fn write_http_sessions_ethernet(path: &Path, server: (Ipv4Addr, u16), spec: Sessions) -> anyhow::Result<()> {
    write_sessions(path, server, spec, DataLink::ETHERNET, false)
}

fn write_sessions(
    path: &Path,
    server: (Ipv4Addr, u16),
    spec: Sessions,
    datalink: DataLink,
    reuse_ports: bool,
) -> anyhow::Result<()> {
    assert!(spec.count <= 50_000 * 200, "client addresses run out");
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let header = PcapHeader { datalink, ..PcapHeader::default() };
    let mut out = PcapWriter::with_header(std::io::BufWriter::new(file), header)?;
    // Zero MAC addresses, which nothing reads, and IPv4's ethertype.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x08, 0x00]);
    let mut record = |ts_us: u64, packet: &[u8]| {
        let bytes = if datalink == DataLink::ETHERNET {
            frame.truncate(14);
            frame.extend_from_slice(packet);
            &frame[..]
        } else {
            packet
        };
        out.write_packet(&PcapPacket::new(Duration::from_micros(ts_us), bytes.len() as u32, bytes)).map(|_| ())
    };
    let syn_options = linux_syn_options(1460, 1, 7);
    for s in 0..spec.count {
        let (src, ts) = if reuse_ports {
            (client(s / 2), (s / 2) as u64 * spec.gap_us + (s % 2) as u64 * spec.gap_us / 2)
        } else {
            (client(s), s as u64 * spec.gap_us)
        };
        let isn = s.wrapping_mul(2_654_435_761);
        record(ts, &ipv4_tcp(src, server, isn, 0, SYN, syn_options.as_bytes(), &[]))?;
        record(ts, &ipv4_tcp(src, server, isn.wrapping_add(1), ONLINE_ISN + 1, ACK, &[], &[]))?;
        let mut offset = 1u32;
        for r in 0..spec.requests_per_session {
            let request = format!("GET /bench/{s}/{r} HTTP/1.1\r\nHost: bench\r\n\r\n");
            let ack = ONLINE_ISN + 1 + r * RESPONSE;
            record(ts, &ipv4_tcp(src, server, isn.wrapping_add(offset), ack, ACK | PSH, &[], request.as_bytes()))?;
            offset += request.len() as u32;
        }
        let ack = ONLINE_ISN + 1 + spec.requests_per_session * RESPONSE;
        record(ts, &ipv4_tcp(src, server, isn.wrapping_add(offset), ack, FIN | ACK, &[], &[]))?;
    }
    out.into_writer().flush()?;
    Ok(())
}
