//! Building the IP/TCP packets the copier sends to the test server.

use common::{checksum, endpoint::Endpoint, seq::SeqNum, tcp::kind};

/// Largest TCP option block.
pub const MAX_OPTIONS: usize = 40;
/// NOP, NOP, timestamps: what every non-SYN segment carries when timestamps are on.
pub const TS_OPTION_LEN: usize = 12;

/// TCP options, encoded and padded to a multiple of four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    bytes: [u8; MAX_OPTIONS],
    len: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { bytes: [0; MAX_OPTIONS], len: 0 }
    }
}

impl Options {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    /// A SYN's options, laid out as Linux does.
    pub fn syn(mss: u16, window_scale: Option<u8>, sack_permitted: bool, timestamps: Option<(u32, u32)>) -> Self {
        let mut o = Self::default();
        o.push(&[kind::MSS, 4]);
        o.push(&mss.to_be_bytes());
        match (sack_permitted, timestamps) {
            (true, Some(_)) => o.push(&[kind::SACK_PERMITTED, 2]),
            (true, None) => o.push(&[kind::NOP, kind::NOP, kind::SACK_PERMITTED, 2]),
            (false, Some(_)) => o.push(&[kind::NOP, kind::NOP]),
            (false, None) => {}
        }
        if let Some((val, ecr)) = timestamps {
            o.push(&[kind::TIMESTAMPS, 10]);
            o.push(&val.to_be_bytes());
            o.push(&ecr.to_be_bytes());
        }
        if let Some(ws) = window_scale {
            o.push(&[kind::NOP, kind::WINDOW_SCALE, 3, ws]);
        }
        o
    }

    /// NOP, NOP, timestamps.
    pub fn timestamps(val: u32, ecr: u32) -> Self {
        let mut o = Self::default();
        o.push(&[kind::NOP, kind::NOP, kind::TIMESTAMPS, 10]);
        o.push(&val.to_be_bytes());
        o.push(&ecr.to_be_bytes());
        o
    }
}

/// One segment to build.
pub struct Segment<'a> {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: u8,
    pub window: u16,
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

/// IP and TCP header bytes (without options) of a segment to `dst`.
pub fn header_len(dst: &Endpoint) -> usize {
    if dst.ipv4().is_some() {
        40
    } else {
        60
    }
}

/// Appends the IP packet (IPv4 when both ends are IPv4, else IPv6) to `out`; returns its length.
/// Checksums are computed over the header and the payload once.
pub fn write(out: &mut Vec<u8>, s: &Segment<'_>) -> usize {
    let start = out.len();
    let tcp_len = 20 + s.options.len() + s.payload.len();
    let pseudo = match (s.src.ipv4(), s.dst.ipv4()) {
        (Some(src), Some(dst)) => {
            let total = (20 + tcp_len) as u16;
            let ip = start;
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            out.extend_from_slice(&src);
            out.extend_from_slice(&dst);
            let check = checksum::finish(checksum::sum(0, &out[ip..ip + 20]));
            out[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
            checksum::pseudo_v4(src, dst, 6, tcp_len as u16)
        }
        _ => {
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            out.extend_from_slice(&[6, 64]);
            out.extend_from_slice(&s.src.addr);
            out.extend_from_slice(&s.dst.addr);
            checksum::pseudo_v6(s.src.addr, s.dst.addr, 6, tcp_len as u32)
        }
    };
    let tcp = out.len();
    out.extend_from_slice(&s.src.port.to_be_bytes());
    out.extend_from_slice(&s.dst.port.to_be_bytes());
    out.extend_from_slice(&s.seq.0.to_be_bytes());
    out.extend_from_slice(&s.ack.0.to_be_bytes());
    out.push((((20 + s.options.len()) / 4) as u8) << 4);
    out.push(s.flags);
    out.extend_from_slice(&s.window.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(s.options);
    out.extend_from_slice(s.payload);
    let check = checksum::finish(checksum::sum(pseudo, &out[tcp..]));
    out[tcp + 16..tcp + 18].copy_from_slice(&check.to_be_bytes());
    out.len() - start
}

#[cfg(test)]
mod tests {
    use common::tcp::{flags::*, TcpOptions};

    use super::*;
    use crate::capture::{self, Link};

    fn seg<'a>(src: Endpoint, dst: Endpoint, options: &'a [u8], payload: &'a [u8]) -> Segment<'a> {
        Segment { src, dst, seq: SeqNum(7), ack: SeqNum(9), flags: ACK | PSH, window: 1000, options, payload }
    }

    fn checksums_verify(packet: &[u8]) {
        let (pseudo, tcp) = if packet[0] >> 4 == 4 {
            assert_eq!(checksum::finish(checksum::sum(0, &packet[..20])), 0, "IPv4 header checksum");
            let src = packet[12..16].try_into().unwrap();
            let dst = packet[16..20].try_into().unwrap();
            (checksum::pseudo_v4(src, dst, 6, (packet.len() - 20) as u16), &packet[20..])
        } else {
            let src = packet[8..24].try_into().unwrap();
            let dst = packet[24..40].try_into().unwrap();
            (checksum::pseudo_v6(src, dst, 6, (packet.len() - 40) as u32), &packet[40..])
        };
        assert_eq!(checksum::finish(checksum::sum(pseudo, tcp)), 0, "TCP checksum");
    }

    #[test]
    fn ipv4_packets_parse_back_with_valid_checksums() {
        let (a, b) = (Endpoint::v4([10, 0, 0, 1], 40000), Endpoint::v4([10, 0, 0, 2], 80));
        let opts = Options::timestamps(5, 6);
        let mut out = vec![0xee]; // appends after what is there
        let n = write(&mut out, &seg(a, b, opts.as_bytes(), b"GET / HTTP/1.1\r\n\r\n"));
        let packet = &out[1..];
        assert_eq!(n, packet.len());
        checksums_verify(packet);
        let s = capture::parse(Link::Ip, packet).unwrap().unwrap();
        assert_eq!((s.src, s.dst, s.seq, s.ack, s.flags), (a, b, SeqNum(7), SeqNum(9), ACK | PSH));
        assert_eq!(s.options.timestamps, Some((5, 6)));
        assert_eq!(s.payload, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn ipv6_packets_parse_back_with_valid_checksums() {
        let (a, b) = (Endpoint::v6([0xfd; 16], 40000), Endpoint::v6([0xfe; 16], 443));
        let mut out = Vec::new();
        write(&mut out, &seg(a, b, &[], b"odd"));
        checksums_verify(&out);
        assert_eq!(capture::parse(Link::Ip, &out).unwrap().unwrap().payload, b"odd");
    }

    #[test]
    fn syn_options_round_trip_in_every_combination() {
        for sack in [false, true] {
            for ts in [None, Some((1, 0))] {
                for ws in [None, Some(7)] {
                    let o = Options::syn(1460, ws, sack, ts);
                    assert_eq!(o.as_bytes().len() % 4, 0);
                    let parsed = TcpOptions::parse(o.as_bytes()).unwrap();
                    assert_eq!(
                        parsed,
                        TcpOptions { mss: Some(1460), window_scale: ws, sack_permitted: sack, timestamps: ts }
                    );
                }
            }
        }
    }
}
