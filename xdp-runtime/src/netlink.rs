//! The rtnetlink requests we need and aya keeps private: "which XDP program is on this
//! interface?", "remove the netlink-attached XDP program", and, for AF_XDP transmit, "which
//! interface and next hop lead to this address?", "what is that neighbour's MAC?" and "what is
//! this interface's MAC?".

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;

const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const XDP_ATTACHED_MULTI: u8 = 4;

pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub(crate) const XDP_FLAGS_HW_MODE: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IfInfoMsg {
    family: u8,
    _pad: u8,
    kind: u16,
    index: i32,
    flags: u32,
    change: u32,
}

/// An XDP program found on an interface, with the attach mode it runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    pub id: u32,
    /// `XDP_FLAGS_*_MODE`: what a netlink detach must name.
    pub mode_flags: u32,
}

impl AttachedProgram {
    pub fn mode_name(&self) -> &'static str {
        match self.mode_flags {
            XDP_FLAGS_SKB_MODE => "generic",
            XDP_FLAGS_HW_MODE => "offload",
            _ => "native",
        }
    }
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; zeroed, it addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and addr are valid for the lengths passed, for the length of the call.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(&buf[..n as usize])
        }
    }
}

fn push_struct<T: Copy>(buf: &mut Vec<u8>, value: &T) {
    // SAFETY: T is a repr(C) plain-old-data header.
    let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
    buf.extend_from_slice(bytes);
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn message<T: Copy>(kind: u16, flags: u16, header: &T, attrs: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    push_struct(&mut msg, &NlMsgHdr { kind, flags: NLM_F_REQUEST | flags, seq: 1, ..Default::default() });
    push_struct(&mut msg, header);
    msg.extend_from_slice(attrs);
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

fn request(kind: u16, flags: u16, if_index: u32, attrs: &[u8]) -> Vec<u8> {
    message(
        kind,
        flags,
        &IfInfoMsg { family: libc::AF_UNSPEC as u8, index: if_index as i32, ..Default::default() },
        attrs,
    )
}

/// Sends one request and returns the reply's body after its `header_len`-byte family header,
/// or the kernel's error.
fn query(msg: &[u8], reply_kind: u16, header_len: usize) -> io::Result<Vec<u8>> {
    let socket = Socket::open()?;
    socket.send(msg)?;
    let mut buf = vec![0u8; 64 * 1024];
    let reply = socket.recv(&mut buf)?;
    let hdr = size_of::<NlMsgHdr>();
    match reply.get(4..6).map(|k| u16::from_ne_bytes([k[0], k[1]])) {
        Some(k) if k == reply_kind => Ok(reply.get(hdr + header_len..).unwrap_or_default().to_vec()),
        Some(NLMSG_ERROR) => Err(netlink_error(reply).unwrap_or_else(|| io::Error::other("netlink error"))),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink reply")),
    }
}

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
/// NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT: an entry whose
/// link-layer address may be used.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RtMsg {
    family: u8,
    dst_len: u8,
    src_len: u8,
    tos: u8,
    table: u8,
    protocol: u8,
    scope: u8,
    kind: u8,
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NdMsg {
    family: u8,
    _pad1: u8,
    _pad2: u16,
    ifindex: i32,
    state: u16,
    flags: u8,
    kind: u8,
}

fn family_and_bytes(ip: std::net::IpAddr) -> (u8, Vec<u8>) {
    match ip {
        std::net::IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec()),
        std::net::IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec()),
    }
}

fn ip_from(payload: &[u8]) -> Option<std::net::IpAddr> {
    match payload.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(payload).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(payload).ok()?)),
        _ => None,
    }
}

/// Where the kernel would send a packet to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub if_index: u32,
    /// The gateway, or `None` when `dst` is on the link.
    pub gateway: Option<std::net::IpAddr>,
}

impl Route {
    /// The address whose MAC a frame to `dst` needs.
    pub fn next_hop(&self, dst: std::net::IpAddr) -> std::net::IpAddr {
        self.gateway.unwrap_or(dst)
    }
}

/// `ip route get DST`.
pub fn route_to(dst: std::net::IpAddr) -> io::Result<Route> {
    let (family, bytes) = family_and_bytes(dst);
    let mut request_attrs = Vec::new();
    push_attr(&mut request_attrs, RTA_DST, &bytes);
    let header = RtMsg { family, dst_len: (bytes.len() * 8) as u8, ..Default::default() };
    let body = query(&message(RTM_GETROUTE, 0, &header, &request_attrs), RTM_NEWROUTE, size_of::<RtMsg>())?;
    let (mut if_index, mut gateway) = (None, None);
    for (kind, payload) in attrs(&body) {
        match kind {
            RTA_OIF => if_index = u32_of(payload),
            RTA_GATEWAY => gateway = ip_from(payload),
            _ => {}
        }
    }
    let if_index = if_index.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no route to {dst}")))?;
    Ok(Route { if_index, gateway })
}

/// The usable MAC of neighbour `ip` on `if_index`, if the kernel has one.
pub fn neighbour(if_index: u32, ip: std::net::IpAddr) -> io::Result<Option<[u8; 6]>> {
    let (family, bytes) = family_and_bytes(ip);
    let mut request_attrs = Vec::new();
    push_attr(&mut request_attrs, NDA_DST, &bytes);
    let header = NdMsg { family, ifindex: if_index as i32, ..Default::default() };
    let body = match query(&message(RTM_GETNEIGH, 0, &header, &request_attrs), RTM_NEWNEIGH, 0) {
        Ok(body) => body,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let state = body.get(8..10).map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]));
    if state & NUD_VALID == 0 {
        return Ok(None);
    }
    let mac = attrs(body.get(size_of::<NdMsg>()..).unwrap_or_default())
        .find(|&(kind, _)| kind == NDA_LLADDR)
        .and_then(|(_, payload)| <[u8; 6]>::try_from(payload).ok());
    Ok(mac)
}

/// The MAC address of `if_index`.
pub fn link_address(if_index: u32) -> io::Result<Option<[u8; 6]>> {
    let body = query(&request(RTM_GETLINK, 0, if_index, &[]), RTM_NEWLINK, size_of::<IfInfoMsg>())?;
    let mac = attrs(&body).find(|&(kind, _)| kind == IFLA_ADDRESS).and_then(|(_, p)| <[u8; 6]>::try_from(p).ok());
    Ok(mac)
}

/// The MTU of `if_index`.
pub fn link_mtu(if_index: u32) -> io::Result<u32> {
    let body = query(&request(RTM_GETLINK, 0, if_index, &[]), RTM_NEWLINK, size_of::<IfInfoMsg>())?;
    let mtu = attrs(&body).find(|&(kind, _)| kind == IFLA_MTU).and_then(|(_, p)| u32_of(p));
    mtu.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("interface {if_index} reports no MTU")))
}

/// The interface a packet to `dst` leaves by, and that interface's MTU.
pub fn path_mtu(dst: std::net::IpAddr) -> io::Result<(u32, u32)> {
    let route = route_to(dst)?;
    Ok((route.if_index, link_mtu(route.if_index)?))
}

/// Iterates the `(type, payload)` attributes in `buf`, stopping at the first malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

fn u32_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// Parses the `IFLA_XDP` nest of an `RTM_NEWLINK` message body (after the `ifinfomsg`).
fn xdp_program_in(link_attrs: &[u8]) -> Option<AttachedProgram> {
    let (_, xdp) = attrs(link_attrs).find(|&(kind, _)| kind == IFLA_XDP)?;
    let mut attached = 0u8;
    let (mut prog, mut drv, mut skb) = (None, None, None);
    for (kind, payload) in attrs(xdp) {
        match kind {
            IFLA_XDP_ATTACHED => attached = *payload.first()?,
            IFLA_XDP_PROG_ID => prog = u32_of(payload),
            IFLA_XDP_DRV_PROG_ID => drv = u32_of(payload),
            IFLA_XDP_SKB_PROG_ID => skb = u32_of(payload),
            _ => {}
        }
    }
    let (id, mode_flags) = match attached {
        XDP_ATTACHED_DRV => (prog?, XDP_FLAGS_DRV_MODE),
        XDP_ATTACHED_SKB => (prog?, XDP_FLAGS_SKB_MODE),
        XDP_ATTACHED_HW => (prog?, XDP_FLAGS_HW_MODE),
        XDP_ATTACHED_MULTI => match (drv, skb) {
            (Some(id), _) => (id, XDP_FLAGS_DRV_MODE),
            (None, Some(id)) => (id, XDP_FLAGS_SKB_MODE),
            (None, None) => return None,
        },
        _ => return None,
    };
    Some(AttachedProgram { id, mode_flags })
}

/// The XDP program attached to `if_index`, if any.
pub fn xdp_program(if_index: u32) -> io::Result<Option<AttachedProgram>> {
    let socket = Socket::open()?;
    socket.send(&request(RTM_GETLINK, 0, if_index, &[]))?;
    let mut buf = vec![0u8; 64 * 1024];
    let reply = socket.recv(&mut buf)?;
    let header_len = size_of::<NlMsgHdr>();
    if reply.len() < header_len {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    match kind {
        RTM_NEWLINK => {
            let body = reply.get(header_len + size_of::<IfInfoMsg>()..).unwrap_or_default();
            Ok(xdp_program_in(body))
        }
        NLMSG_ERROR => Err(netlink_error(reply).unwrap_or_else(|| io::Error::other("netlink error"))),
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected netlink message type {other}"))),
    }
}

fn netlink_error(reply: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

/// Removes the netlink-attached XDP program in the given mode. Fails with `EBUSY` when the
/// program is held by a bpf_link (see [`crate::bpf::detach_xdp_link`]).
pub fn detach_xdp(if_index: u32, mode_flags: u32) -> io::Result<()> {
    let mut nest = Vec::new();
    push_attr(&mut nest, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    push_attr(&mut nest, IFLA_XDP_FLAGS, &mode_flags.to_ne_bytes());
    let mut attrs = Vec::new();
    push_attr(&mut attrs, IFLA_XDP | NLA_F_NESTED, &nest);
    let socket = Socket::open()?;
    socket.send(&request(RTM_SETLINK, NLM_F_ACK, if_index, &attrs))?;
    let mut buf = vec![0u8; 4096];
    let reply = socket.recv(&mut buf)?;
    match netlink_error(reply) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(children: &[(u16, &[u8])]) -> Vec<u8> {
        let mut inner = Vec::new();
        for (kind, payload) in children {
            push_attr(&mut inner, *kind, payload);
        }
        let mut outer = Vec::new();
        push_attr(&mut outer, 3, b"veth0\0"); // IFLA_IFNAME first, as the kernel sends it
        push_attr(&mut outer, IFLA_XDP | NLA_F_NESTED, &inner);
        outer
    }

    #[test]
    fn no_xdp_attribute_means_no_program() {
        assert_eq!(xdp_program_in(&nest(&[(IFLA_XDP_ATTACHED, &[0])])), None);
        let mut only_name = Vec::new();
        push_attr(&mut only_name, 3, b"lo\0");
        assert_eq!(xdp_program_in(&only_name), None);
    }

    #[test]
    fn native_and_generic_programs_report_their_mode() {
        let drv = nest(&[(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_DRV]), (IFLA_XDP_PROG_ID, &7u32.to_ne_bytes())]);
        assert_eq!(xdp_program_in(&drv), Some(AttachedProgram { id: 7, mode_flags: XDP_FLAGS_DRV_MODE }));
        let skb = nest(&[(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]), (IFLA_XDP_PROG_ID, &9u32.to_ne_bytes())]);
        assert_eq!(xdp_program_in(&skb).unwrap().mode_name(), "generic");
    }

    #[test]
    fn truncated_attributes_do_not_panic() {
        let drv = nest(&[(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_DRV]), (IFLA_XDP_PROG_ID, &7u32.to_ne_bytes())]);
        for cut in 0..drv.len() {
            let _ = xdp_program_in(&drv[..cut]);
        }
    }
}
