//! Bounds-checked parsing of Ethernet / VLAN / IPv4 / IPv6 / TCP headers.
//!
//! Written for the XDP verifier first: every read is preceded by an explicit bounds check of the
//! packet pointers (`start + off + len > end`), loops have constant bounds, and header offsets
//! are capped so the verifier can bound them. The same code runs on the host over a byte slice, which is how
//! it is unit-tested.

use core::mem::size_of;

use crate::{endpoint::Endpoint, tcp::offset as tcp_offset};

/// Ethernet header length (no FCS).
pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags we look through (QinQ).
const MAX_VLAN_TAGS: usize = 2;
const VLAN_HLEN: usize = 4;

const IPPROTO_TCP: u8 = 6;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;

/// IPv6 extension headers we skip to find TCP.
const IPV6_EXT_HOP_BY_HOP: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_FRAGMENT: u8 = 44;
const IPV6_EXT_AUTH: u8 = 51;
const IPV6_EXT_DEST_OPTS: u8 = 60;
const MAX_IPV6_EXT_HEADERS: usize = 4;
/// No sane header chain puts TCP further in; capping lets the verifier bound offsets.
const MAX_L4_OFFSET: usize = 256;

/// Why a frame that claims to carry IP/TCP could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Malformed {
    /// A header runs past the end of the frame.
    Truncated = 1,
    /// The IP version nibble disagrees with the EtherType.
    BadIpVersion = 2,
    /// IPv4 IHL below 5, or an IP length shorter than the headers it covers.
    BadIpLength = 3,
    /// TCP data offset below 5.
    BadTcpDataOffset = 4,
    /// More IPv6 extension headers (or bytes of them) than we follow.
    HeaderChainTooLong = 5,
    /// A tunnel header (VXLAN, GENEVE, GRE) that breaks its own rules.
    BadTunnelHeader = 6,
}

impl Malformed {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated header",
            Self::BadIpVersion => "IP version does not match EtherType",
            Self::BadIpLength => "bad IP header or payload length",
            Self::BadTcpDataOffset => "TCP data offset below 5",
            Self::HeaderChainTooLong => "IPv6 extension header chain too long",
            Self::BadTunnelHeader => "bad tunnel header",
        }
    }
}

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::error::Error for Malformed {}

/// The facts about a TCP segment the XDP programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: Endpoint,
    pub dst: Endpoint,
    /// Offset of the IP header from the start of the frame.
    pub l3_offset: usize,
    /// Offset of the TCP header from the start of the frame.
    pub l4_offset: usize,
    /// TCP header length in bytes (data offset × 4).
    pub tcp_header_len: usize,
    /// Offset where the IP payload ends, by the IP header's length (the frame may be padded).
    pub l4_end: usize,
    pub flags: u8,
    pub ipv6: bool,
}

/// Reads a `T` at `off` bytes from `start` if it lies wholly before `end`.
///
/// # Safety
/// `start..end` must be readable memory (an XDP context's data range, or a slice).
#[inline(always)]
pub(crate) unsafe fn load<T: Copy>(start: usize, end: usize, off: usize) -> Result<T, Malformed> {
    if start + off + size_of::<T>() > end {
        return Err(Malformed::Truncated);
    }
    // SAFETY: the caller's `start..end` is readable and the check above keeps the read inside it.
    Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
pub(crate) unsafe fn load_be16(start: usize, end: usize, off: usize) -> Result<u16, Malformed> {
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    Ok(u16::from_be_bytes(unsafe { load::<[u8; 2]>(start, end, off) }?))
}

/// Parses a frame that starts with an Ethernet header.
///
/// `Ok(None)`: not an unfragmented-enough IPv4/IPv6 TCP segment (ARP, UDP, a later fragment...):
/// none of our business. `Err`: it claims to be IP/TCP but its headers do not hold together.
///
/// # Safety
/// `start..end` must be readable memory.
#[inline(always)]
pub unsafe fn parse_ethernet(start: usize, end: usize) -> Result<Option<TcpSegment>, Malformed> {
    // SAFETY: `start..end` is readable (this function's contract).
    let (ethertype, off) = unsafe { ethernet_payload(start, end) }?;
    match ethertype {
        // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
        ETH_P_IPV4 => unsafe { parse_ipv4(start, end, off) },
        // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
        ETH_P_IPV6 => unsafe { parse_ipv6(start, end, off) },
        _ => Ok(None),
    }
}

/// The EtherType of an Ethernet frame's payload and where it starts, past up to two VLAN tags.
///
/// # Safety
/// `start..end` must be readable memory.
#[inline(always)]
pub(crate) unsafe fn ethernet_payload(start: usize, end: usize) -> Result<(u16, usize), Malformed> {
    let mut off = ETH_HLEN - 2;
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let mut ethertype = unsafe { load_be16(start, end, off) }?;
    off += 2;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
        ethertype = unsafe { load_be16(start, end, off + 2) }?;
        off += VLAN_HLEN;
    }
    Ok((ethertype, off))
}

/// Parses an IPv4 packet at `l3` bytes from `start`.
///
/// # Safety
/// `start..end` must be readable memory.
#[inline(always)]
pub unsafe fn parse_ipv4(start: usize, end: usize, l3: usize) -> Result<Option<TcpSegment>, Malformed> {
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let hdr: [u8; IPV4_MIN_HLEN] = unsafe { load(start, end, l3) }?;
    if hdr[0] >> 4 != 4 {
        return Err(Malformed::BadIpVersion);
    }
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if ihl < IPV4_MIN_HLEN || total_len < ihl {
        return Err(Malformed::BadIpLength);
    }
    if hdr[9] != IPPROTO_TCP {
        return Ok(None);
    }
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    if frag_offset != 0 {
        // A later fragment carries no TCP header.
        return Ok(None);
    }
    if total_len < ihl + TCP_MIN_HLEN {
        return Err(Malformed::BadIpLength);
    }
    let l4 = l3 + ihl;
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let (src_port, dst_port, tcp_header_len, flags) = unsafe { parse_tcp(start, end, l4) }?;
    if total_len < ihl + tcp_header_len {
        return Err(Malformed::BadIpLength);
    }
    Ok(Some(TcpSegment {
        src: Endpoint::v4([hdr[12], hdr[13], hdr[14], hdr[15]], src_port),
        dst: Endpoint::v4([hdr[16], hdr[17], hdr[18], hdr[19]], dst_port),
        l3_offset: l3,
        l4_offset: l4,
        tcp_header_len,
        l4_end: l3 + total_len,
        flags,
        ipv6: false,
    }))
}

/// Parses an IPv6 packet at `l3` bytes from `start`, skipping common extension headers.
///
/// # Safety
/// `start..end` must be readable memory.
#[inline(always)]
pub unsafe fn parse_ipv6(start: usize, end: usize, l3: usize) -> Result<Option<TcpSegment>, Malformed> {
    // No single-byte loads in this file: LLVM turns `p + 1 > end` into `p >= end`, from which
    // the verifier learns no packet range.
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let [version, _]: [u8; 2] = unsafe { load(start, end, l3) }?;
    if version >> 4 != 6 {
        return Err(Malformed::BadIpVersion);
    }
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let payload_len = unsafe { load_be16(start, end, l3 + 4) }? as usize;
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let [mut next, _hop_limit]: [u8; 2] = unsafe { load(start, end, l3 + 6) }?;
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let src: [u8; 16] = unsafe { load(start, end, l3 + 8) }?;
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let dst: [u8; 16] = unsafe { load(start, end, l3 + 24) }?;
    let mut l4 = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !matches!(
            next,
            IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS | IPV6_EXT_AUTH | IPV6_EXT_FRAGMENT
        ) {
            break;
        }
        // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
        let [ext_next, ext_len]: [u8; 2] = unsafe { load(start, end, l4) }?;
        let ext_len = match next {
            IPV6_EXT_AUTH => (ext_len as usize + 2) * 4,
            IPV6_EXT_FRAGMENT => {
                // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
                let frag = unsafe { load_be16(start, end, l4 + 2) }?;
                if frag & 0xfff8 != 0 {
                    // A later fragment carries no TCP header.
                    return Ok(None);
                }
                8
            }
            _ => (ext_len as usize + 1) * 8,
        };
        next = ext_next;
        l4 += ext_len;
        if l4 > MAX_L4_OFFSET {
            return Err(Malformed::HeaderChainTooLong);
        }
    }
    if next != IPPROTO_TCP {
        return match next {
            IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS | IPV6_EXT_AUTH | IPV6_EXT_FRAGMENT => {
                Err(Malformed::HeaderChainTooLong)
            }
            _ => Ok(None),
        };
    }
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let (src_port, dst_port, tcp_header_len, flags) = unsafe { parse_tcp(start, end, l4) }?;
    let l4_end = l3 + IPV6_HLEN + payload_len;
    if l4_end < l4 + tcp_header_len {
        return Err(Malformed::BadIpLength);
    }
    Ok(Some(TcpSegment {
        src: Endpoint::v6(src, src_port),
        dst: Endpoint::v6(dst, dst_port),
        l3_offset: l3,
        l4_offset: l4,
        tcp_header_len,
        l4_end,
        flags,
        ipv6: true,
    }))
}

/// Returns (source port, destination port, header length, flags) of the TCP header at `l4`.
#[inline(always)]
unsafe fn parse_tcp(start: usize, end: usize, l4: usize) -> Result<(u16, u16, usize, u8), Malformed> {
    if l4 > MAX_L4_OFFSET {
        return Err(Malformed::HeaderChainTooLong);
    }
    // SAFETY: `start..end` is readable (this function's contract); `load` checks the bounds.
    let hdr: [u8; TCP_MIN_HLEN] = unsafe { load(start, end, l4) }?;
    let header_len = ((hdr[tcp_offset::DATA_OFFSET] >> 4) as usize) * 4;
    if header_len < TCP_MIN_HLEN {
        return Err(Malformed::BadTcpDataOffset);
    }
    if start + l4 + header_len > end {
        return Err(Malformed::Truncated);
    }
    let be16 = |at: usize| u16::from_be_bytes([hdr[at], hdr[at + 1]]);
    Ok((be16(tcp_offset::SRC_PORT), be16(tcp_offset::DST_PORT), header_len, hdr[tcp_offset::FLAGS]))
}

/// Safe entry point for userspace and tests.
pub fn parse_frame(frame: &[u8]) -> Result<Option<TcpSegment>, Malformed> {
    let start = frame.as_ptr() as usize;
    // SAFETY: the slice is readable from start to start + len.
    unsafe { parse_ethernet(start, start + frame.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::flags::*;

    const MAC: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

    fn eth(ethertype: u16, vlans: &[u16]) -> Vec<u8> {
        let mut f = MAC.to_vec();
        for &tpid in vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let doff = (20 + options.len()) / 4;
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&1000u32.to_be_bytes());
        t.extend_from_slice(&0u32.to_be_bytes());
        t.push((doff as u8) << 4);
        t.push(flags);
        t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(options);
        t
    }

    fn ipv4(proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let ihl = 20 + options.len();
        let total = (ihl + payload.len()) as u16;
        let mut p = vec![0x40 | (ihl / 4) as u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&[10, 1, 0, 2, 10, 2, 0, 2]);
        p.extend_from_slice(options);
        p.extend_from_slice(payload);
        p
    }

    fn ipv6(next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((ext.len() + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&[0xfd; 16]);
        p.extend_from_slice(&[0xfe; 16]);
        p.extend_from_slice(ext);
        p.extend_from_slice(payload);
        p
    }

    fn frame(l2: Vec<u8>, l3: Vec<u8>) -> Vec<u8> {
        [l2, l3].concat()
    }

    #[test]
    fn plain_ipv4_syn_yields_endpoints_offsets_and_flags() {
        let f = frame(eth(ETH_P_IPV4, &[]), ipv4(6, &[], &tcp(40000, 80, SYN, &[])));
        let seg = parse_frame(&f).unwrap().unwrap();
        assert_eq!(seg.src, Endpoint::v4([10, 1, 0, 2], 40000));
        assert_eq!(seg.dst, Endpoint::v4([10, 2, 0, 2], 80));
        assert_eq!((seg.l3_offset, seg.l4_offset, seg.tcp_header_len, seg.l4_end), (14, 34, 20, 54));
        assert_eq!(seg.flags, SYN);
        assert!(!seg.ipv6);
    }

    #[test]
    fn ipv4_options_and_tcp_options_move_the_offsets() {
        let mss = [2, 4, 0x05, 0xb4];
        let f = frame(eth(ETH_P_IPV4, &[]), ipv4(6, &[1, 1, 1, 1], &tcp(1, 2, SYN | ACK, &mss)));
        let seg = parse_frame(&f).unwrap().unwrap();
        assert_eq!((seg.l4_offset, seg.tcp_header_len), (38, 24));
    }

    #[test]
    fn one_and_two_vlan_tags_are_looked_through() {
        for vlans in [&[ETH_P_8021Q][..], &[ETH_P_8021AD, ETH_P_8021Q]] {
            let f = frame(eth(ETH_P_IPV4, vlans), ipv4(6, &[], &tcp(1, 80, ACK, &[])));
            let seg = parse_frame(&f).unwrap().unwrap();
            assert_eq!(seg.l3_offset, 14 + 4 * vlans.len());
        }
    }

    #[test]
    fn ipv6_with_extension_headers_reaches_tcp() {
        let hop_by_hop = [IPV6_EXT_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        let dest_opts = [6, 0, 1, 4, 0, 0, 0, 0];
        let f = frame(
            eth(ETH_P_IPV6, &[]),
            ipv6(IPV6_EXT_HOP_BY_HOP, &[hop_by_hop, dest_opts].concat(), &tcp(5, 443, ACK | PSH, &[])),
        );
        let seg = parse_frame(&f).unwrap().unwrap();
        assert!(seg.ipv6);
        assert_eq!(seg.l4_end, f.len());
        assert_eq!(seg.l4_offset, 14 + 40 + 16);
        assert_eq!(seg.dst, Endpoint::v6([0xfe; 16], 443));
    }

    #[test]
    fn non_tcp_and_non_ip_are_not_ours() {
        assert_eq!(parse_frame(&frame(eth(0x0806, &[]), vec![0; 28])), Ok(None));
        assert_eq!(parse_frame(&frame(eth(ETH_P_IPV4, &[]), ipv4(17, &[], &[0; 8]))), Ok(None));
        assert_eq!(parse_frame(&frame(eth(ETH_P_IPV6, &[]), ipv6(58, &[], &[0; 8]))), Ok(None));
    }

    #[test]
    fn later_fragments_are_not_ours() {
        let mut p = ipv4(6, &[], &[0; 8]);
        p[6] = 0x00;
        p[7] = 0x10; // fragment offset 16 × 8 bytes
        assert_eq!(parse_frame(&frame(eth(ETH_P_IPV4, &[]), p)), Ok(None));
        let frag = [6, 0, 0x00, 0x08, 0, 0, 0, 1];
        assert_eq!(parse_frame(&frame(eth(ETH_P_IPV6, &[]), ipv6(IPV6_EXT_FRAGMENT, &frag, &[0; 8]))), Ok(None));
    }

    #[test]
    fn malformed_headers_are_reported_with_a_reason() {
        let good = frame(eth(ETH_P_IPV4, &[]), ipv4(6, &[], &tcp(1, 80, SYN, &[])));
        // Cut anywhere inside the headers: truncated.
        for cut in 14..good.len() {
            assert_eq!(parse_frame(&good[..cut]), Err(Malformed::Truncated), "cut at {cut}");
        }
        let mut v = good.clone();
        v[14] = 0x65; // version 6 under an IPv4 EtherType
        assert_eq!(parse_frame(&v), Err(Malformed::BadIpVersion));
        let mut v = good.clone();
        v[14] = 0x44; // IHL 4
        assert_eq!(parse_frame(&v), Err(Malformed::BadIpLength));
        let mut v = good.clone();
        v[16..18].copy_from_slice(&30u16.to_be_bytes()); // total length < IP + TCP headers
        assert_eq!(parse_frame(&v), Err(Malformed::BadIpLength));
        let mut v = good.clone();
        v[34 + 12] = 0x40; // data offset 4
        assert_eq!(parse_frame(&v), Err(Malformed::BadTcpDataOffset));
        let mut v = good;
        v[34 + 12] = 0xf0; // data offset 15: options past the end
        assert_eq!(parse_frame(&v), Err(Malformed::Truncated));
    }

    #[test]
    fn ethernet_padding_does_not_count_as_payload() {
        let mut f = frame(eth(ETH_P_IPV4, &[]), ipv4(6, &[], &tcp(1, 80, ACK, &[])));
        f.extend_from_slice(&[0; 6]); // padded to the 60-byte Ethernet minimum
        assert_eq!(parse_frame(&f).unwrap().unwrap().l4_end, 54);
    }

    #[test]
    fn ipv6_payload_length_shorter_than_tcp_header_is_malformed() {
        let mut p = ipv6(6, &[], &tcp(1, 2, ACK, &[]));
        p[4..6].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(parse_frame(&frame(eth(ETH_P_IPV6, &[]), p)), Err(Malformed::BadIpLength));
    }

    #[test]
    fn too_many_ipv6_extension_headers_are_malformed() {
        let ext: Vec<u8> = (0..5).flat_map(|_| [IPV6_EXT_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]).collect();
        let f = frame(eth(ETH_P_IPV6, &[]), ipv6(IPV6_EXT_DEST_OPTS, &ext, &tcp(1, 2, ACK, &[])));
        assert_eq!(parse_frame(&f), Err(Malformed::HeaderChainTooLong));
    }

    #[test]
    fn short_frames_never_panic() {
        for len in 0..14 {
            assert!(parse_frame(&vec![0u8; len]).is_err());
        }
    }
}
