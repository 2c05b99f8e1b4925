//! Offline input: pcap and pcapng files (Ethernet, VLAN, Linux SLL and SLL2, raw IP, BSD
//! loopback), parsed with the `pcap-file` crate into batches.

mod read_ahead;

use std::{
    fs::File,
    io::{Cursor, Read},
    ops::Range,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use pcap_file::{
    pcap::PcapParser,
    pcapng::{blocks::interface_description::InterfaceDescriptionOption, Block, PcapNgParser},
    DataLink, PcapError,
};

use copier_engine::capture::Link;
use read_ahead::ReadAhead;

/// Packets per batch handed to a worker.
pub const BATCH: usize = 256;

/// Captured packets with their capture times, in one reused buffer.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    packets: Vec<(u64, Link, Range<usize>)>,
    /// `--loop`'s round these packets belong to (each round replays in its own port space).
    pub round: u16,
}

impl Batch {
    pub fn push(&mut self, ts_us: u64, link: Link, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.packets.push((ts_us, link, start..self.bytes.len()));
    }

    /// (capture time in µs, link, packet)
    pub fn iter(&self) -> impl Iterator<Item = (u64, Link, &[u8])> + Clone {
        self.packets.iter().map(|(ts, link, r)| (*ts, *link, &self.bytes[r.clone()]))
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.packets.clear();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is neither pcap nor pcapng: {source}")]
    NotACapture { path: String, source: PcapError },
    #[error("{path}: link type {link:?} is not supported (Ethernet, Linux SLL/SLL2, raw IP and BSD loopback are)")]
    LinkType { path: String, link: DataLink },
    #[error("{path} is truncated or corrupt after {records} packet records ({source}); the IP packets among them were replayed")]
    Truncated { path: String, records: u64, source: PcapError },
}

/// Where the IP packet starts in a captured record of `link`, or `None` if this record does not
/// hold IPv4/IPv6 (an ARP under SLL, say).
pub fn strip_link(link: DataLink, data: &[u8]) -> Result<Option<(Link, &[u8])>, DataLink> {
    const SLL_LEN: usize = 16;
    const SLL2_LEN: usize = 20;
    let ip_ethertype = |t: u16| t == 0x0800 || t == 0x86dd;
    Ok(match link {
        DataLink::ETHERNET => Some((Link::Ethernet, data)),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some((Link::Ip, data)),
        DataLink::LINUX_SLL => data
            .get(14..16)
            .filter(|t| ip_ethertype(u16::from_be_bytes([t[0], t[1]])))
            .and_then(|_| data.get(SLL_LEN..))
            .map(|ip| (Link::Ip, ip)),
        DataLink::LINUX_SLL2 => data
            .get(0..2)
            .filter(|t| ip_ethertype(u16::from_be_bytes([t[0], t[1]])))
            .and_then(|_| data.get(SLL2_LEN..))
            .map(|ip| (Link::Ip, ip)),
        // BSD loopback: a 4-byte address family in host order, then IP.
        DataLink::NULL | DataLink::LOOP => data.get(4..).map(|ip| (Link::Ip, ip)),
        other => return Err(other),
    })
}

enum Reader {
    /// `nanos`: the file's timestamps are nanoseconds (not microseconds).
    Pcap {
        parser: PcapParser,
        link: DataLink,
        nanos: bool,
        snaplen: u32,
    },
    PcapNg {
        parser: PcapNgParser,
        interfaces: Vec<(DataLink, u64)>,
    },
}

/// Reads a capture file batch by batch.
pub struct PcapSource {
    path: String,
    input: ReadAhead,
    reader: Reader,
    /// Packet records read (replayed or skipped; pcapng's other blocks are not counted).
    records: u64,
    /// Records skipped: not IP (ARP under SLL), or of an interface with an unknown link type.
    pub skipped: u64,
    /// Records longer than the file's snap length says any is: read whole, as tcpdump reads
    /// them (a snap length of 0 says nothing, and is not counted against).
    pub over_snaplen: u64,
    /// How many bytes of the file the records handed out so far took (the reader buffers
    /// ahead of them), for a progress display on another thread.
    consumed: Arc<AtomicU64>,
}

/// Nanoseconds per pcapng timestamp unit, from `if_tsresol` (default microseconds).
fn units_ns(resolution: Option<u8>) -> u64 {
    match resolution {
        None => 1_000,
        Some(r) if r & 0x80 == 0 => 10u64.checked_pow(9u32.saturating_sub(r as u32)).unwrap_or(1).max(1),
        // Negative powers of two are rare; approximate to whole nanoseconds.
        Some(r) => (1_000_000_000u64 >> (r & 0x7f).min(30)).max(1),
    }
}

impl PcapSource {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let name = path.display().to_string();
        match File::open(path) {
            Ok(file) => Self::from_input(name, Box::new(file)),
            Err(source) => Err(SourceError::Open { path: name, source }),
        }
    }

    /// A capture held in memory; `name` stands for its path in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, SourceError> {
        Self::from_input(name.to_owned(), Box::new(Cursor::new(bytes)))
    }

    /// Reads the file's header, as pcap or else as pcapng.
    fn from_input(name: String, input: Box<dyn Read + Send>) -> Result<Self, SourceError> {
        let mut input = ReadAhead::new(input);
        let reader = match input.parse(|d| PcapParser::new(d).map(|(rest, p)| (d.len() - rest.len(), p))) {
            Ok(parser) => {
                let header = parser.header();
                let link = header.datalink;
                strip_link(link, &[]).map_err(|link| SourceError::LinkType { path: name.clone(), link })?;
                let nanos = header.ts_resolution == pcap_file::TsResolution::NanoSecond;
                Reader::Pcap { parser, link, nanos, snaplen: header.snaplen }
            }
            Err(_) => match input.parse(|d| PcapNgParser::new(d).map(|(rest, p)| (d.len() - rest.len(), p))) {
                Ok(parser) => Reader::PcapNg { parser, interfaces: Vec::new() },
                Err(source) => return Err(SourceError::NotACapture { path: name, source }),
            },
        };
        Ok(Self { path: name, input, reader, records: 0, skipped: 0, over_snaplen: 0, consumed: Arc::default() })
    }

    /// About how many bytes of the file have been handed out, readable while it is read.
    pub fn progress(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.consumed)
    }

    /// Fills `batch` with up to [`BATCH`] packets; `Ok(false)` at the end of the file.
    pub fn next_batch(&mut self, batch: &mut Batch) -> Result<bool, SourceError> {
        batch.clear();
        let result = self.fill_batch(batch);
        self.consumed.store(self.input.consumed, Ordering::Relaxed);
        result.map_err(|source| SourceError::Truncated { path: self.path.clone(), records: self.records, source })
    }

    fn fill_batch(&mut self, batch: &mut Batch) -> Result<bool, PcapError> {
        while batch.len() < BATCH {
            if !self.input.has_data_left()? {
                return Ok(!batch.is_empty());
            }
            // Whether a packet record was read, whatever became of it.
            let record = match &mut self.reader {
                // Raw records: the crate refuses a record longer than the header's snap length
                // (and every record under a snap length of 0), which tcpdump reads.
                Reader::Pcap { parser, link, nanos, snaplen } => self.input.parse(|data| {
                    let (rest, p) = parser.next_raw_packet(data)?;
                    if *snaplen != 0 && p.incl_len > *snaplen {
                        self.over_snaplen += 1;
                    }
                    let frac_us = if *nanos { u64::from(p.ts_frac) / 1000 } else { u64::from(p.ts_frac) };
                    let ts = u64::from(p.ts_sec) * 1_000_000 + frac_us;
                    match strip_link(*link, &p.data) {
                        Ok(Some((l, ip))) => batch.push(ts, l, ip),
                        _ => self.skipped += 1,
                    }
                    Ok((data.len() - rest.len(), true))
                })?,
                Reader::PcapNg { parser, interfaces } => self.input.parse(|data| {
                    let (rest, block) = parser.next_block(data)?;
                    let record = match block {
                        Block::InterfaceDescription(idb) => {
                            let resolution = idb.options.iter().find_map(|o| match o {
                                InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                                _ => None,
                            });
                            interfaces.push((idb.linktype, units_ns(resolution)));
                            false
                        }
                        Block::EnhancedPacket(epb) => {
                            // pcap-file hands the raw tick count over as nanoseconds.
                            let ticks = epb.timestamp.as_nanos() as u64;
                            match interfaces.get(epb.interface_id as usize) {
                                Some(&(link, ns)) => match strip_link(link, &epb.data) {
                                    Ok(Some((l, ip))) => batch.push(ticks.saturating_mul(ns) / 1_000, l, ip),
                                    _ => self.skipped += 1,
                                },
                                None => self.skipped += 1,
                            }
                            true
                        }
                        Block::SimplePacket(spb) => {
                            match interfaces.first().map(|&(link, _)| strip_link(link, &spb.data)) {
                                Some(Ok(Some((l, ip)))) => batch.push(0, l, ip),
                                _ => self.skipped += 1,
                            }
                            true
                        }
                        _ => false,
                    };
                    Ok((data.len() - rest.len(), record))
                })?,
            };
            self.records += u64::from(record);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use pcap_file::{
        pcap::{PcapHeader, PcapPacket, PcapWriter},
        pcapng::{
            blocks::{enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock},
            PcapNgWriter,
        },
    };

    use super::*;

    fn ipv4_tcp() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        p.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        p
    }

    fn read_all(path: &Path) -> Result<Vec<(u64, Link, Vec<u8>)>, SourceError> {
        let mut source = PcapSource::open(path)?;
        let mut batch = Batch::default();
        let mut out = Vec::new();
        while source.next_batch(&mut batch)? {
            out.extend(batch.iter().map(|(t, l, d)| (t, l, d.to_vec())));
        }
        Ok(out)
    }

    #[test]
    fn link_headers_are_stripped_to_ip() {
        let ip = ipv4_tcp();
        let mut sll = vec![0; 14];
        sll.extend_from_slice(&0x0800u16.to_be_bytes());
        sll.extend_from_slice(&ip);
        assert_eq!(strip_link(DataLink::LINUX_SLL, &sll), Ok(Some((Link::Ip, &ip[..]))));
        let mut sll2 = 0x86ddu16.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&ip);
        assert_eq!(strip_link(DataLink::LINUX_SLL2, &sll2), Ok(Some((Link::Ip, &ip[..]))));
        let mut arp = vec![0; 14];
        arp.extend_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(strip_link(DataLink::LINUX_SLL, &arp), Ok(None), "not IP");
        assert_eq!(strip_link(DataLink::ETHERNET, &ip), Ok(Some((Link::Ethernet, &ip[..]))));
        assert_eq!(strip_link(DataLink::IEEE802_11, &ip), Err(DataLink::IEEE802_11));
    }

    #[test]
    fn pcap_files_are_read_with_microsecond_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.pcap");
        let header = PcapHeader { datalink: DataLink::RAW, ..Default::default() };
        let mut w = PcapWriter::with_header(File::create(&path).unwrap(), header).unwrap();
        let ip = ipv4_tcp();
        for i in 0..300u64 {
            w.write_packet(&PcapPacket::new(Duration::from_micros(1_000_000 + i * 10), ip.len() as u32, &ip)).unwrap();
        }
        drop(w);
        let packets = read_all(&path).unwrap();
        assert_eq!(packets.len(), 300, "across batches");
        assert_eq!(packets[1].0 - packets[0].0, 10);
        assert_eq!(packets[0].1, Link::Ip);
    }

    #[test]
    fn pcapng_times_follow_the_interface_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eth.pcapng");
        let mut w = PcapNgWriter::new(File::create(&path).unwrap()).unwrap();
        let idb = InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen: 65535, options: vec![] };
        w.write_pcapng_block(idb).unwrap();
        let frame = [vec![0; 12], vec![0x08, 0x00], ipv4_tcp()].concat();
        for ticks in [5_000_000u64, 5_000_250] {
            // Default resolution: the ticks are microseconds.
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(ticks),
                original_len: frame.len() as u32,
                data: Cow::Borrowed(&frame),
                options: vec![],
            };
            w.write_pcapng_block(epb).unwrap();
        }
        drop(w);
        let packets = read_all(&path).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!((packets[0].0, packets[1].0 - packets[0].0), (5_000_000, 250));
        assert_eq!(packets[0].1, Link::Ethernet);
    }

    #[test]
    fn a_truncated_file_is_reported_after_its_complete_packets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pcap");
        write_three_records(&path);
        let (_, batch, err) = cut_and_read(&path);
        assert!(matches!(err, SourceError::Truncated { records: 2, .. }), "{err}");
        assert_eq!(batch.len(), 2, "the complete packets are kept");
        assert!(err.to_string().contains("truncated"));
    }

    /// A raw-IP pcap of three TCP records, a microsecond apart.
    fn write_three_records(path: &Path) {
        let header = PcapHeader { datalink: DataLink::RAW, ..Default::default() };
        let mut w = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
        let ip = ipv4_tcp();
        for i in 0..3u64 {
            w.write_packet(&PcapPacket::new(Duration::from_micros(i), ip.len() as u32, &ip)).unwrap();
        }
    }

    /// Cuts the last 7 bytes off `path` (inside its last record) and reads it: the error, and
    /// what was read before it.
    fn cut_and_read(path: &Path) -> (PcapSource, Batch, SourceError) {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len - 7).unwrap();
        let mut source = PcapSource::open(path).unwrap();
        let mut batch = Batch::default();
        let err = source.next_batch(&mut batch).unwrap_err();
        (source, batch, err)
    }

    /// A raw-IP pcap of three records whose header then says `snaplen`.
    fn with_snaplen(dir: &Path, snaplen: u32) -> std::path::PathBuf {
        let path = dir.join(format!("snap{snaplen}.pcap"));
        write_three_records(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[16..20].copy_from_slice(&snaplen.to_be_bytes()); // the global header's snaplen (big-endian file)
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn odd_snap_lengths_are_read_as_tcpdump_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        for (snaplen, over) in [(0, 0), (20, 3)] {
            let mut source = PcapSource::open(&with_snaplen(dir.path(), snaplen)).unwrap();
            let mut batch = Batch::default();
            assert!(source.next_batch(&mut batch).unwrap());
            assert_eq!(batch.len(), 3, "snaplen {snaplen}: every record");
            assert_eq!(source.over_snaplen, over, "snaplen {snaplen}");
        }
    }

    #[test]
    fn a_truncated_pcapng_counts_packet_records_not_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pcapng");
        let mut w = PcapNgWriter::new(File::create(&path).unwrap()).unwrap();
        for linktype in [DataLink::ETHERNET, DataLink::USB_LINUX] {
            w.write_pcapng_block(InterfaceDescriptionBlock { linktype, snaplen: 65535, options: vec![] }).unwrap();
        }
        let ip = [vec![0; 12], vec![0x08, 0x00], ipv4_tcp()].concat();
        // The first record is of the interface whose link type is not replayed: skipped.
        for interface_id in [1, 0, 0] {
            let epb = EnhancedPacketBlock {
                interface_id,
                timestamp: Duration::from_micros(1),
                original_len: ip.len() as u32,
                data: Cow::Borrowed(&ip),
                options: vec![],
            };
            w.write_pcapng_block(epb).unwrap();
        }
        drop(w);
        let (source, batch, err) = cut_and_read(&path);
        // The interface block is no packet record; the skipped record is one, not replayed.
        assert!(matches!(err, SourceError::Truncated { records: 2, .. }), "{err}");
        assert_eq!((batch.len(), source.skipped), (1, 1));
    }

    #[test]
    fn files_that_are_not_captures_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hello, this is not a capture file at all").unwrap();
        assert!(matches!(PcapSource::open(&path), Err(SourceError::NotACapture { .. })));
        assert!(matches!(PcapSource::open(&dir.path().join("missing")), Err(SourceError::Open { .. })));
    }
}
