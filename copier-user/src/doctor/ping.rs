//! ICMP echo with Don't Fragment, for the doctor's path-MTU check: a packet as large as the
//! copier will send either reaches the test server (its echo comes back), is refused by a
//! router that says its MTU, or vanishes (a link between with a smaller MTU and no ICMP).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use common::checksum;

/// What became of one echo request.
#[derive(Debug, PartialEq, Eq)]
pub enum Echo {
    Replied,
    /// A router refused it as too big, naming its next hop's MTU.
    TooBig {
        mtu: u32,
    },
    Silent,
}

const IPV4_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const UNREACHABLE_V4: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const TOO_BIG_V6: u8 = 2;
const IPV6_HEADER: usize = 40;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The echo request's ICMP message: `size` bytes of IP packet in all.
fn request(v4: bool, id: u16, size: usize) -> Vec<u8> {
    let header = if v4 { IPV4_HEADER } else { IPV6_HEADER };
    let mut m = vec![0u8; size.saturating_sub(header).max(ICMP_HEADER)];
    m[0] = if v4 { ECHO_REQUEST_V4 } else { ECHO_REQUEST_V6 };
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&1u16.to_be_bytes());
    if v4 {
        // ICMPv6's checksum covers a pseudo-header: the kernel fills it in on raw ICMPv6 sockets.
        let sum = checksum::finish(checksum::sum(0, &m));
        m[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    m
}

/// Reads what one received datagram says of our request `id` (IPv4 raw sockets deliver the IP
/// header, IPv6 ones do not).
fn answer(v4: bool, id: u16, bytes: &[u8]) -> Option<Echo> {
    let icmp = if v4 { bytes.get(usize::from(bytes.first()? & 0x0f) * 4..)? } else { bytes };
    let ours = |at: usize| icmp.get(at..at + 2) == Some(&id.to_be_bytes()[..]);
    match (v4, *icmp.first()?, *icmp.get(1)?) {
        (true, ECHO_REPLY_V4, 0) | (false, ECHO_REPLY_V6, 0) if ours(4) => Some(Echo::Replied),
        (true, UNREACHABLE_V4, FRAG_NEEDED) => {
            // The refused packet follows: its IP header, then our request's ICMP header.
            let inner = icmp.get(ICMP_HEADER..)?;
            let inner_icmp = ICMP_HEADER + usize::from(inner.first()? & 0x0f) * 4;
            ours(inner_icmp + 4).then(|| Echo::TooBig { mtu: u32::from(u16::from_be_bytes([icmp[6], icmp[7]])) })
        }
        (false, TOO_BIG_V6, 0) if ours(ICMP_HEADER + IPV6_HEADER + 4) => {
            Some(Echo::TooBig { mtu: u32::from_be_bytes(icmp.get(4..8)?.try_into().ok()?) })
        }
        _ => None,
    }
}

/// Sends one echo request of `size` bytes (IP header included) to `dst` with Don't Fragment,
/// and waits up to `wait` for what becomes of it.
pub fn echo(dst: IpAddr, size: usize, wait: Duration) -> io::Result<Echo> {
    let v4 = dst.is_ipv4();
    let (family, proto, level, option) = if v4 {
        (libc::AF_INET, libc::IPPROTO_ICMP, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)
    } else {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER)
    };
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe { OwnedFd::from_raw_fd(check(libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto))?) };
    // PROBE: Don't Fragment set, and the route's cached path MTU ignored (a probe must go whole).
    let probe: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: a valid socket and an int option of the right size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&probe as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let id = u16::from_be_bytes(common::auth::nonce()[..2].try_into().expect("2 bytes"));
    let message = request(v4, id, size);
    let addr = socket2::SockAddr::from(std::net::SocketAddr::new(dst, 0));
    // SAFETY: the buffer and the address are valid for the call.
    check(unsafe {
        libc::sendto(fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0, addr.as_ptr().cast(), addr.len())
            as libc::c_int
    })?;
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Echo::Silent);
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if check(unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) })? == 0 {
            continue;
        }
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                continue;
            }
            return Err(err);
        }
        if let Some(echo) = answer(v4, id, &buf[..n as usize]) {
            return Ok(echo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_v4(id: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
        let mut icmp = request(true, id, 64);
        icmp[0] = ECHO_REPLY_V4;
        p.extend_from_slice(&icmp);
        p
    }

    #[test]
    fn a_request_is_as_large_as_asked_and_its_checksum_verifies() {
        let m = request(true, 7, 9000);
        assert_eq!(m.len() + IPV4_HEADER, 9000);
        assert_eq!(checksum::finish(checksum::sum(0, &m)), 0, "a valid checksum sums to zero");
        assert_eq!(request(false, 7, 1500).len() + IPV6_HEADER, 1500);
    }

    #[test]
    fn only_our_reply_counts() {
        assert_eq!(answer(true, 7, &reply_v4(7)), Some(Echo::Replied));
        assert_eq!(answer(true, 7, &reply_v4(8)), None, "another ping's reply");
        assert_eq!(answer(true, 7, &[0x45]), None, "cut short");
        let mut ours = request(false, 9, 100);
        ours[0] = ECHO_REPLY_V6;
        assert_eq!(answer(false, 9, &ours), Some(Echo::Replied));
    }

    #[test]
    fn a_routers_refusal_names_its_mtu() {
        let refused = reply_v4(7); // the refused packet: an IP header and our ICMP header
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 9, 10, 0, 0, 1];
        p.extend_from_slice(&[UNREACHABLE_V4, FRAG_NEEDED, 0, 0, 0, 0, 0x05, 0xdc]);
        p.extend_from_slice(&refused[..IPV4_HEADER + ICMP_HEADER]);
        assert_eq!(answer(true, 7, &p), Some(Echo::TooBig { mtu: 1500 }));
        assert_eq!(answer(true, 8, &p), None, "someone else's packet");

        let mut v6 = vec![TOO_BIG_V6, 0, 0, 0, 0, 0, 0x05, 0x00];
        v6.extend_from_slice(&[0x60; IPV6_HEADER]);
        v6.extend_from_slice(&request(false, 3, 100)[..ICMP_HEADER]);
        assert_eq!(answer(false, 3, &v6), Some(Echo::TooBig { mtu: 1280 }));
    }
}
