//! Cloud mirror encapsulations: where the mirrored frame starts inside a VXLAN (AWS Traffic
//! Mirroring, Azure vTAP), GENEVE (GCP, AWS Gateway Load Balancer) or GRE packet (plain, and
//! ERSPAN types I, II and III).
//!
//! Written for the XDP verifier like [`crate::parse`]: explicit bounds checks before each
//! read, no loops, and an inner offset capped so it stays bounded. The outer packet must be
//! unfragmented, IPv4 or IPv6 without extension headers: what the mirroring services send.

use crate::parse::{ethernet_payload, load, load_be16, Malformed, ETH_P_IPV4, ETH_P_IPV6};

const IPPROTO_UDP: u8 = 17;
const IPPROTO_GRE: u8 = 47;
const UDP_HLEN: usize = 8;
const VXLAN_HLEN: usize = 8;
/// VXLAN's "valid VNI" flag.
const VXLAN_FLAG_VNI: u8 = 0x08;
const GENEVE_HLEN: usize = 8;
/// GRE protocol types: a whole Ethernet frame (transparent Ethernet bridging), ERSPAN type I/II
/// and type III.
const GRE_P_ETHERNET: u16 = 0x6558;
const GRE_P_ERSPAN: u16 = 0x88be;
const GRE_P_ERSPAN3: u16 = 0x22eb;
const GRE_CHECKSUM: u16 = 0x8000;
const GRE_ROUTING: u16 = 0x4000;
const GRE_KEY: u16 = 0x2000;
const GRE_SEQUENCE: u16 = 0x1000;
const GRE_VERSION: u16 = 0x0007;
const ERSPAN2_HLEN: usize = 8;
const ERSPAN3_HLEN: usize = 12;
/// ERSPAN type III: the optional platform-specific subheader follows (the `O` bit).
const ERSPAN3_SUBHEADER: u8 = 0x01;
const ERSPAN3_SUBHEADER_LEN: usize = 8;
/// No mirroring service puts the inner frame further in (GENEVE options are at most 252
/// bytes); capping keeps the offset bounded for the verifier.
pub const MAX_INNER_OFFSET: usize = 384;

/// Which encapsulations to look inside: UDP ports (0: off) and GRE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decap {
    pub vxlan_port: u16,
    pub geneve_port: u16,
    pub gre: bool,
}

impl Decap {
    /// The IANA ports.
    pub const VXLAN_PORT: u16 = 4789;
    pub const GENEVE_PORT: u16 = 6081;

    pub const fn is_off(&self) -> bool {
        self.vxlan_port == 0 && self.geneve_port == 0 && !self.gre
    }
}

/// Where the mirrored frame starts in a tunnel packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    /// An Ethernet frame at this offset.
    Ethernet(usize),
    /// An IP packet with no link header (plain GRE, or GENEVE carrying IP), of this EtherType.
    Ip { offset: usize, ethertype: u16 },
}

/// Finds the mirrored frame inside a tunnel packet (an Ethernet frame from `start` to `end`).
/// `Ok(None)`: not a packet of an encapsulation `decap` names (or a fragment of one): the frame
/// is what it is. `Err`: it claims to be one but its headers do not hold together.
///
/// # Safety
/// `start..end` must be readable memory.
#[inline(always)]
pub unsafe fn inner_frame(start: usize, end: usize, decap: &Decap) -> Result<Option<Inner>, Malformed> {
    // SAFETY: `start..end` is readable (this function's contract).
    let (ethertype, l3) = unsafe { ethernet_payload(start, end) }?;
    // SAFETY: as above.
    let Some((proto, l4)) = (unsafe { outer_ip(start, end, ethertype, l3) })? else { return Ok(None) };
    let inner = match proto {
        // SAFETY: as above.
        IPPROTO_UDP => unsafe { udp_tunnel(start, end, l4, decap) }?,
        // SAFETY: as above.
        IPPROTO_GRE if decap.gre => unsafe { gre(start, end, l4) }?,
        _ => None,
    };
    match inner {
        Some(Inner::Ethernet(offset) | Inner::Ip { offset, .. }) if offset > MAX_INNER_OFFSET => {
            Err(Malformed::HeaderChainTooLong)
        }
        inner => Ok(inner),
    }
}

/// The outer IP header's protocol and where its payload starts; `None` for a fragment or
/// another EtherType.
#[inline(always)]
unsafe fn outer_ip(start: usize, end: usize, ethertype: u16, l3: usize) -> Result<Option<(u8, usize)>, Malformed> {
    match ethertype {
        ETH_P_IPV4 => {
            // SAFETY: `start..end` is readable (the caller's contract); `load` checks the bounds.
            let hdr: [u8; 20] = unsafe { load(start, end, l3) }?;
            if hdr[0] >> 4 != 4 {
                return Err(Malformed::BadIpVersion);
            }
            let ihl = ((hdr[0] & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(Malformed::BadIpLength);
            }
            // More fragments, or a later fragment: the inner frame is not whole here.
            if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3fff != 0 {
                return Ok(None);
            }
            Ok(Some((hdr[9], l3 + ihl)))
        }
        ETH_P_IPV6 => {
            // SAFETY: `start..end` is readable (the caller's contract); `load` checks the bounds.
            let [version, _]: [u8; 2] = unsafe { load(start, end, l3) }?;
            if version >> 4 != 6 {
                return Err(Malformed::BadIpVersion);
            }
            // SAFETY: as above.
            let [next, _]: [u8; 2] = unsafe { load(start, end, l3 + 6) }?;
            Ok(Some((next, l3 + 40)))
        }
        _ => Ok(None),
    }
}

#[inline(always)]
unsafe fn udp_tunnel(start: usize, end: usize, udp: usize, decap: &Decap) -> Result<Option<Inner>, Malformed> {
    // SAFETY: `start..end` is readable (the caller's contract); `load` checks the bounds.
    let dst_port = unsafe { load_be16(start, end, udp + 2) }?;
    let header = udp + UDP_HLEN;
    if decap.vxlan_port != 0 && dst_port == decap.vxlan_port {
        // SAFETY: as above.
        let vxlan: [u8; VXLAN_HLEN] = unsafe { load(start, end, header) }?;
        if vxlan[0] & VXLAN_FLAG_VNI == 0 {
            return Err(Malformed::BadTunnelHeader);
        }
        return Ok(Some(Inner::Ethernet(header + VXLAN_HLEN)));
    }
    if decap.geneve_port != 0 && dst_port == decap.geneve_port {
        // SAFETY: as above.
        let geneve: [u8; GENEVE_HLEN] = unsafe { load(start, end, header) }?;
        let ver_opt_len = geneve[0];
        if ver_opt_len >> 6 != 0 {
            return Ok(None); // a GENEVE version we do not know
        }
        let protocol = u16::from_be_bytes([geneve[2], geneve[3]]);
        let offset = header + GENEVE_HLEN + (ver_opt_len & 0x3f) as usize * 4;
        return Ok(match protocol {
            GRE_P_ETHERNET => Some(Inner::Ethernet(offset)),
            ETH_P_IPV4 | ETH_P_IPV6 => Some(Inner::Ip { offset, ethertype: protocol }),
            _ => None,
        });
    }
    Ok(None)
}

#[inline(always)]
unsafe fn gre(start: usize, end: usize, gre: usize) -> Result<Option<Inner>, Malformed> {
    // SAFETY: `start..end` is readable (the caller's contract); `load` checks the bounds.
    let flags = unsafe { load_be16(start, end, gre) }?;
    // SAFETY: as above.
    let protocol = unsafe { load_be16(start, end, gre + 2) }?;
    if flags & (GRE_VERSION | GRE_ROUTING) != 0 {
        return Ok(None); // PPTP's enhanced GRE, or source routing: not a mirror
    }
    let mut offset = gre + 4;
    for (bit, len) in [(GRE_CHECKSUM, 4), (GRE_KEY, 4), (GRE_SEQUENCE, 4)] {
        if flags & bit != 0 {
            offset += len;
        }
    }
    Ok(match protocol {
        GRE_P_ETHERNET => Some(Inner::Ethernet(offset)),
        ETH_P_IPV4 | ETH_P_IPV6 => Some(Inner::Ip { offset, ethertype: protocol }),
        // Type I has no sequence number and no ERSPAN header; type II has both.
        GRE_P_ERSPAN if flags & GRE_SEQUENCE == 0 => Some(Inner::Ethernet(offset)),
        GRE_P_ERSPAN => Some(Inner::Ethernet(offset + ERSPAN2_HLEN)),
        GRE_P_ERSPAN3 => {
            // SAFETY: as above (the header's last two bytes hold the `O` bit).
            let [_, last]: [u8; 2] = unsafe { load(start, end, offset + ERSPAN3_HLEN - 2) }?;
            let sub = if last & ERSPAN3_SUBHEADER != 0 { ERSPAN3_SUBHEADER_LEN } else { 0 };
            Some(Inner::Ethernet(offset + ERSPAN3_HLEN + sub))
        }
        _ => None,
    })
}

/// [`inner_frame`] over a byte slice.
pub fn inner_of(frame: &[u8], decap: &Decap) -> Result<Option<Inner>, Malformed> {
    let start = frame.as_ptr() as usize;
    // SAFETY: the slice is readable from start to start + len.
    unsafe { inner_frame(start, start + frame.len(), decap) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_frame;

    const ALL: Decap = Decap { vxlan_port: Decap::VXLAN_PORT, geneve_port: Decap::GENEVE_PORT, gre: true };

    /// A mirrored client SYN: 10.100.1.2:40000 -> 10.100.1.1:80.
    fn inner_syn() -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 100, 1, 2, 10, 100, 1, 1]);
        f.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    /// Outer Ethernet + IPv4 (`proto`) + `l4` + `inner`.
    fn outer_v4(proto: u8, l4: &[u8], inner: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 9, 1, 2, 0, 0, 0, 9, 2, 0x08, 0x00];
        let total = (20 + l4.len() + inner.len()) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 100, 9, 1, 10, 100, 9, 2]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(l4);
        f.extend_from_slice(inner);
        f
    }

    fn outer_v6(proto: u8, l4: &[u8], inner: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 9, 1, 2, 0, 0, 0, 9, 2, 0x86, 0xdd, 0x60, 0, 0, 0];
        f.extend_from_slice(&((l4.len() + inner.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&[0xfd; 32]);
        f.extend_from_slice(l4);
        f.extend_from_slice(inner);
        f
    }

    fn udp(dst_port: u16, header: &[u8]) -> Vec<u8> {
        let mut u = vec![0x12, 0x34];
        u.extend_from_slice(&dst_port.to_be_bytes());
        u.extend_from_slice(&[0, 0, 0, 0]);
        u.extend_from_slice(header);
        u
    }

    /// The inner frame parses as the mirrored SYN where `inner_of` says it starts.
    fn assert_finds_the_syn(frame: &[u8], decap: &Decap) {
        let Ok(Some(Inner::Ethernet(offset))) = inner_of(frame, decap) else {
            panic!("no inner frame: {:?}", inner_of(frame, decap))
        };
        assert_eq!(&frame[offset..], inner_syn().as_slice());
        let syn = parse_frame(&frame[offset..]).unwrap().unwrap();
        assert_eq!((syn.src.port, syn.dst.port), (40000, 80));
    }

    #[test]
    fn vxlan_over_ipv4_and_ipv6_on_its_port() {
        let vxlan = [0x08, 0, 0, 0, 0, 0, 42, 0];
        assert_finds_the_syn(&outer_v4(17, &udp(4789, &vxlan), &inner_syn()), &ALL);
        assert_finds_the_syn(&outer_v6(17, &udp(4789, &vxlan), &inner_syn()), &ALL);
        let custom = Decap { vxlan_port: 8472, ..Decap::default() };
        assert_finds_the_syn(&outer_v4(17, &udp(8472, &vxlan), &inner_syn()), &custom);
        assert_eq!(inner_of(&outer_v4(17, &udp(4789, &vxlan), &inner_syn()), &custom), Ok(None), "another port");
        let no_vni = [0, 0, 0, 0, 0, 0, 42, 0];
        assert_eq!(inner_of(&outer_v4(17, &udp(4789, &no_vni), &inner_syn()), &ALL), Err(Malformed::BadTunnelHeader));
    }

    #[test]
    fn geneve_skips_its_options_and_may_carry_ip() {
        // Two 4-byte words of options.
        let mut geneve = vec![0x02, 0, 0x65, 0x58, 0, 0, 42, 0];
        geneve.extend_from_slice(&[0xab; 8]);
        assert_finds_the_syn(&outer_v4(17, &udp(6081, &geneve), &inner_syn()), &ALL);
        let ip = [0x00, 0, 0x08, 0x00, 0, 0, 42, 0];
        let frame = outer_v4(17, &udp(6081, &ip), &inner_syn()[14..]);
        assert_eq!(inner_of(&frame, &ALL), Ok(Some(Inner::Ip { offset: 14 + 20 + 8 + 8, ethertype: 0x0800 })));
        let future = [0x40, 0, 0x65, 0x58, 0, 0, 42, 0];
        assert_eq!(inner_of(&outer_v4(17, &udp(6081, &future), &inner_syn()), &ALL), Ok(None));
    }

    #[test]
    fn gre_with_its_optional_fields_plain_and_erspan() {
        // Plain Ethernet over GRE with a key (gretap's `key`).
        let gre = [0x20, 0, 0x65, 0x58, 0, 0, 0, 7];
        assert_finds_the_syn(&outer_v4(47, &gre, &inner_syn()), &ALL);
        // Checksum, key and sequence.
        let gre = [0xb0, 0, 0x65, 0x58, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1];
        assert_finds_the_syn(&outer_v6(47, &gre, &inner_syn()), &ALL);
        // ERSPAN type II: sequence number, then its 8-byte header.
        let erspan2 = [0x10, 0, 0x88, 0xbe, 0, 0, 0, 1, 0x10, 0, 0, 123, 0, 0, 0, 0];
        assert_finds_the_syn(&outer_v4(47, &erspan2, &inner_syn()), &ALL);
        // ERSPAN type I: neither.
        assert_finds_the_syn(&outer_v4(47, &[0, 0, 0x88, 0xbe], &inner_syn()), &ALL);
        // ERSPAN type III, without and with its platform subheader.
        let mut erspan3 = vec![0x10, 0, 0x22, 0xeb, 0, 0, 0, 1, 0x20, 0, 0, 123, 0, 0, 0, 9, 0, 0, 0, 0];
        assert_finds_the_syn(&outer_v4(47, &erspan3, &inner_syn()), &ALL);
        *erspan3.last_mut().unwrap() |= 1;
        erspan3.extend_from_slice(&[0xcd; 8]);
        assert_finds_the_syn(&outer_v4(47, &erspan3, &inner_syn()), &ALL);
        // IP over GRE: no link header.
        let frame = outer_v4(47, &[0, 0, 0x86, 0xdd], &[0x60; 40]);
        assert_eq!(inner_of(&frame, &ALL), Ok(Some(Inner::Ip { offset: 38, ethertype: 0x86dd })));
    }

    #[test]
    fn what_is_not_a_named_tunnel_is_left_alone() {
        assert_eq!(inner_of(&inner_syn(), &ALL), Ok(None), "a plain frame");
        let gre = [0x20, 0, 0x65, 0x58, 0, 0, 0, 7];
        let off = Decap { gre: false, ..ALL };
        assert_eq!(inner_of(&outer_v4(47, &gre, &inner_syn()), &off), Ok(None), "GRE not asked for");
        assert_eq!(inner_of(&outer_v4(47, &[0x00, 0x01, 0x88, 0x0b], &[0; 20]), &ALL), Ok(None), "PPTP");
        let mut fragment = outer_v4(17, &udp(4789, &[0x08, 0, 0, 0, 0, 0, 42, 0]), &inner_syn());
        fragment[20] = 0x20; // more fragments
        assert_eq!(inner_of(&fragment, &ALL), Ok(None));
        assert_eq!(inner_of(&outer_v4(17, &udp(53, &[0; 8]), &[]), &ALL), Ok(None), "DNS");
    }

    #[test]
    fn a_cut_header_is_malformed_at_every_length() {
        let frame = outer_v4(47, &[0x10, 0, 0x22, 0xeb, 0, 0, 0, 1], &[0; 4]);
        assert_eq!(inner_of(&frame, &ALL), Err(Malformed::Truncated), "ERSPAN III cut");
        let vxlan = outer_v4(17, &udp(4789, &[0x08, 0, 0, 0, 0, 0, 42, 0]), &[]);
        assert_eq!(inner_of(&vxlan, &ALL), Ok(Some(Inner::Ethernet(vxlan.len()))));
        for len in 0..vxlan.len() {
            assert_eq!(inner_of(&vxlan[..len], &ALL), Err(Malformed::Truncated), "cut at {len}");
        }
    }

    #[test]
    fn the_deepest_inner_frame_a_mirror_can_send_is_within_the_cap() {
        // Two VLAN tags, IPv4 with 40 bytes of options, GENEVE with 252 bytes of options.
        let mut frame = vec![2, 0, 0, 0, 9, 1, 2, 0, 0, 0, 9, 2, 0x81, 0x00, 0, 1, 0x81, 0x00, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&[0x4f, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 100, 9, 1, 10, 100, 9, 2]);
        frame.extend_from_slice(&[1; 40]);
        let mut geneve = vec![0x3f, 0, 0x65, 0x58, 0, 0, 42, 0];
        geneve.extend_from_slice(&[0; 252]);
        frame.extend_from_slice(&udp(6081, &geneve));
        let offset = frame.len();
        assert!(offset <= MAX_INNER_OFFSET);
        frame.extend_from_slice(&inner_syn());
        assert_eq!(inner_of(&frame, &ALL), Ok(Some(Inner::Ethernet(offset))));
    }
}
