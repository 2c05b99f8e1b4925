//! Transmit paths for the packets the engine builds (whole IP packets).

use crate::xdp_tx::XdpTx;

/// The transmit path a worker uses.
pub enum Transmit {
    Raw(RawTx),
    Xdp(Box<XdpTx>),
}

impl Transmit {
    pub fn send<'a>(&mut self, packets: impl Iterator<Item = &'a [u8]>) {
        match self {
            Self::Raw(raw) => raw.send(packets),
            Self::Xdp(xdp) => xdp.send(packets),
        }
    }

    /// The largest IP packet this path carries (raw sockets: as large as the route's MTU).
    pub fn max_packet(&self) -> usize {
        match self {
            Self::Raw(_) => usize::from(u16::MAX),
            Self::Xdp(xdp) => xdp.max_packet,
        }
    }

    /// Packets that could not be sent.
    pub fn errors(&self) -> u64 {
        match self {
            Self::Raw(raw) => raw.errors,
            Self::Xdp(xdp) => xdp.errors,
        }
    }

    /// Why the last packet that could not be sent was not sent, if one was not.
    pub fn last_error(&self) -> Option<String> {
        match self {
            Self::Raw(raw) => raw.last_error.as_ref().map(ToString::to_string),
            Self::Xdp(xdp) => xdp.last_error.clone(),
        }
    }
}

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `--tx raw`: raw IP sockets, the kernel routes and resolves neighbours. One `sendmmsg` per
/// batch, not a syscall per packet.
pub struct RawTx {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
    /// Packets the kernel refused (no route, buffer full...).
    pub errors: u64,
    pub last_error: Option<io::Error>,
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2); IPPROTO_RAW implies we include the IP header (IPv4 and IPv6).
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const MAX_BATCH: usize = 64;

impl RawTx {
    pub fn open() -> io::Result<Self> {
        Ok(Self { v4: raw_socket(libc::AF_INET)?, v6: raw_socket(libc::AF_INET6).ok(), errors: 0, last_error: None })
    }

    /// Sends every packet; failures are counted, not fatal (a replay goes on).
    pub fn send<'a>(&mut self, packets: impl Iterator<Item = &'a [u8]>) {
        // Build up to MAX_BATCH messages per family, then sendmmsg them.
        let mut v4: Vec<(&[u8], libc::sockaddr_in)> = Vec::with_capacity(MAX_BATCH);
        let mut v6: Vec<(&[u8], libc::sockaddr_in6)> = Vec::new();
        for p in packets {
            match p.first().map(|b| b >> 4) {
                Some(4) if p.len() >= 20 => {
                    // SAFETY: all-zero is a valid sockaddr_in.
                    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                    sa.sin_family = libc::AF_INET as u16;
                    sa.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
                    v4.push((p, sa));
                    if v4.len() == MAX_BATCH {
                        self.flush(&mut v4, &mut v6);
                    }
                }
                Some(6) if p.len() >= 40 => {
                    // SAFETY: all-zero is a valid sockaddr_in6.
                    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                    sa.sin6_family = libc::AF_INET6 as u16;
                    sa.sin6_addr.s6_addr.copy_from_slice(&p[24..40]);
                    v6.push((p, sa));
                    if v6.len() == MAX_BATCH {
                        self.flush(&mut v4, &mut v6);
                    }
                }
                _ => self.errors += 1,
            }
        }
        self.flush(&mut v4, &mut v6);
    }

    fn flush(&mut self, v4: &mut Vec<(&[u8], libc::sockaddr_in)>, v6: &mut Vec<(&[u8], libc::sockaddr_in6)>) {
        if !v4.is_empty() {
            let fd = self.v4.as_raw_fd();
            self.sendmmsg(fd, v4);
            v4.clear();
        }
        if !v6.is_empty() {
            match self.v6.as_ref().map(|s| s.as_raw_fd()) {
                Some(fd) => self.sendmmsg(fd, v6),
                None => self.errors += v6.len() as u64,
            }
            v6.clear();
        }
    }

    fn sendmmsg<A>(&mut self, fd: i32, msgs: &mut [(&[u8], A)]) {
        let mut iovs: Vec<libc::iovec> =
            msgs.iter().map(|(p, _)| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }).collect();
        let mut hdrs: Vec<libc::mmsghdr> = msgs
            .iter_mut()
            .zip(iovs.iter_mut())
            .map(|((_, addr), iov)| {
                // SAFETY: all-zero is a valid msghdr; pointers stay valid for the call below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (addr as *mut A).cast();
                h.msg_hdr.msg_namelen = size_of::<A>() as u32;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut sent = 0;
        while sent < hdrs.len() {
            // SAFETY: hdrs[sent..] point at live buffers and addresses.
            let n = unsafe { libc::sendmmsg(fd, hdrs[sent..].as_mut_ptr(), (hdrs.len() - sent) as u32, 0) };
            if n <= 0 {
                // Skip the packet that failed and go on with the rest.
                self.errors += 1;
                self.last_error = Some(io::Error::last_os_error());
                sent += 1;
            } else {
                sent += n as usize;
            }
        }
    }
}
