//! Captured client packets, parsed for the engine.

use common::{
    endpoint::Endpoint,
    parse::{parse_ethernet, parse_ipv4, parse_ipv6, Malformed, TcpSegment},
    seq::SeqNum,
    tcp::{TcpFields, TcpOptions},
};

/// What a captured packet starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// An Ethernet frame (XDP, pcap LINKTYPE_ETHERNET).
    Ethernet,
    /// A bare IPv4 or IPv6 packet (pcap LINKTYPE_RAW, or after stripping SLL headers).
    Ip,
}

/// A client's TCP segment as captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSegment<'a> {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: u8,
    pub window: u16,
    pub options: TcpOptions,
    pub payload: &'a [u8],
}

/// What [`parse`] makes of a captured packet: a client's segment, not TCP, or malformed.
pub type Parsed<'a> = Result<Option<ClientSegment<'a>>, Malformed>;

/// Parses the link, IP and TCP headers, nothing more.
fn segment(link: Link, packet: &[u8]) -> Result<Option<TcpSegment>, Malformed> {
    let (start, end) = (packet.as_ptr() as usize, packet.as_ptr() as usize + packet.len());
    // SAFETY: start..end is the slice.
    unsafe {
        match link {
            Link::Ethernet => parse_ethernet(start, end),
            Link::Ip => match packet.first().map(|b| b >> 4) {
                Some(4) => parse_ipv4(start, end, 0),
                Some(6) => parse_ipv6(start, end, 0),
                _ => Err(Malformed::BadIpVersion),
            },
        }
    }
}

/// The two endpoints of a TCP packet, for sharding; `None` for anything else.
pub fn endpoints(link: Link, packet: &[u8]) -> Option<(Endpoint, Endpoint)> {
    segment(link, packet).ok().flatten().map(|s| (s.src, s.dst))
}

/// Parses a captured packet. `Ok(None)`: not TCP. A capture cut short by the snap length is
/// `Truncated`: its missing bytes could not be replayed.
pub fn parse(link: Link, packet: &[u8]) -> Parsed<'_> {
    let Some(seg) = segment(link, packet)? else { return Ok(None) };
    if seg.l4_end > packet.len() {
        return Err(Malformed::Truncated);
    }
    let header = &packet[seg.l4_offset..seg.l4_offset + seg.tcp_header_len];
    let fields = TcpFields::read(header).ok_or(Malformed::Truncated)?;
    let options = TcpOptions::parse(&header[20..]).unwrap_or_default();
    Ok(Some(ClientSegment {
        src: seg.src,
        dst: seg.dst,
        seq: fields.seq,
        ack: fields.ack,
        flags: fields.flags,
        window: fields.window,
        options,
        payload: &packet[seg.l4_offset + seg.tcp_header_len..seg.l4_end],
    }))
}
