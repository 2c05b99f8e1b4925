//! Hand-made packets: TCP SYNs from any source address (as the copier sends them), and a
//! sniffer that shows which packets a namespace's kernel saw.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::bail;
use common::{endpoint::Endpoint, seq::SeqNum};
use copier_engine::emit::{self, Options};

/// The options Linux puts on a SYN: MSS, SACK-permitted, timestamps, window scale.
pub fn linux_syn_options(mss: u16, ts_val: u32, window_scale: u8) -> Options {
    Options::syn(mss, Some(window_scale), true, Some((ts_val, 0)))
}

/// An IPv4 TCP segment with correct checksums, built by the copier's own packet writer.
pub fn ipv4_tcp(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    emit::write(
        &mut out,
        &emit::Segment {
            src: Endpoint::v4(src.0.octets(), src.1),
            dst: Endpoint::v4(dst.0.octets(), dst.1),
            seq: SeqNum(seq),
            ack: SeqNum(ack),
            flags,
            window: 64240,
            options,
            payload,
        },
    );
    out
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
            size_of::<libc::sockaddr_in>() as u32,
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
        let fd = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, (libc::ETH_P_ALL as u16).to_be() as i32)
        };
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
