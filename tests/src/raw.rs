//! Hand-made packets: TCP SYNs from any source address (as the copier sends them), and a
//! sniffer that shows which packets a namespace's kernel saw.

use std::{net::Ipv4Addr, os::fd::{AsRawFd, FromRawFd, OwnedFd}};

use anyhow::bail;
use common::checksum;

/// The options Linux puts on a SYN: MSS, SACK-permitted, timestamps, NOP, window scale.
pub fn linux_syn_options(mss: u16, ts_val: u32, window_scale: u8) -> [u8; 20] {
    let mut o = [0u8; 20];
    o[..4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    o[4..6].copy_from_slice(&[4, 2]);
    o[6..8].copy_from_slice(&[8, 10]);
    o[8..12].copy_from_slice(&ts_val.to_be_bytes());
    o[16..20].copy_from_slice(&[1, 3, 3, window_scale]);
    o
}

/// An IPv4 TCP segment with correct checksums.
pub fn ipv4_tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seq: u32, ack: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let tcp_len = 20 + options.len() + payload.len();
    let total = 20 + tcp_len;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src.0.octets());
    p.extend_from_slice(&dst.0.octets());
    let ip_check = checksum::finish(checksum::sum(0, &p));
    p[10..12].copy_from_slice(&ip_check.to_be_bytes());
    let mut t = Vec::with_capacity(tcp_len);
    t.extend_from_slice(&src.1.to_be_bytes());
    t.extend_from_slice(&dst.1.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push((((20 + options.len()) / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    let pseudo = checksum::pseudo_v4(src.0.octets(), dst.0.octets(), 6, tcp_len as u16);
    let tcp_check = checksum::finish(checksum::sum(pseudo, &t));
    t[16..18].copy_from_slice(&tcp_check.to_be_bytes());
    p.extend_from_slice(&t);
    p
}

/// Sends an IPv4 packet (header included) with a raw socket; the kernel routes it by its
/// destination. Call inside [`crate::Netns::run`].
pub fn send_ipv4(packet: &[u8]) -> anyhow::Result<()> {
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    // SAFETY: libc socket calls on a descriptor owned here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let n = libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if n < 0 {
            bail!("sending a raw IPv4 packet to {dst}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An AF_PACKET socket on every interface of the namespace it was opened in: it sees what the
/// kernel's stack saw (after XDP), in both directions.
pub struct Sniffer(OwnedFd);

impl Sniffer {
    /// Opens it; call inside [`crate::Netns::run`].
    pub fn open() -> anyhow::Result<Self> {
        // SAFETY: socket(2) with a protocol in network byte order, as packet(7) wants.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, (libc::ETH_P_ALL as u16).to_be() as i32) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Every frame captured so far.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return frames;
            }
            frames.push(buf[..n as usize].to_vec());
        }
    }
}
