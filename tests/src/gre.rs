//! A GRE mirror built by hand, for kernels without GRE devices (this test bed's has none):
//! each frame that arrives on one interface is sent out of another inside outer Ethernet,
//! IPv4 and GRE headers, plain or ERSPAN, as a switch's or a cloud's mirror session sends it.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::bail;
use common::checksum;

use crate::netns::Netns;

/// Which GRE encapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gre {
    /// Transparent Ethernet bridging with a key (Linux's gretap).
    Plain,
    /// ERSPAN type II (Cisco, Azure's and most switches' default).
    ErspanII,
    /// ERSPAN type III with its platform-specific subheader.
    ErspanIII,
}

impl Gre {
    /// The GRE header and whatever ERSPAN header follows, for the `seq`-th packet.
    fn header(self, seq: u32) -> Vec<u8> {
        match self {
            Gre::Plain => vec![0x20, 0, 0x65, 0x58, 0, 0, 0, 7],
            Gre::ErspanII => {
                let mut h = vec![0x10, 0, 0x88, 0xbe];
                h.extend_from_slice(&seq.to_be_bytes());
                // Version 1, VLAN 0; session 123; index 0.
                h.extend_from_slice(&[0x10, 0, 0, 123, 0, 0, 0, 0]);
                h
            }
            Gre::ErspanIII => {
                let mut h = vec![0x10, 0, 0x22, 0xeb];
                h.extend_from_slice(&seq.to_be_bytes());
                // Version 2, session 123, a timestamp, then hardware id 7 and the O bit.
                h.extend_from_slice(&[0x20, 0, 0, 123, 0, 0, 0x12, 0x34, 0, 0, 0x07 << 2, 0x01]);
                h.extend_from_slice(&[0; 8]); // the platform subheader
                h
            }
        }
    }
}

/// Encapsulates while it lives.
pub struct GreMirror {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn packet_socket(iface: &str) -> anyhow::Result<OwnedFd> {
    let index = xdp_runtime::iface::index(iface)?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain libc calls on a descriptor owned here.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        if libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32)
            != 0
        {
            bail!("binding to {iface}: {}", std::io::Error::last_os_error());
        }
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

impl GreMirror {
    /// In `ns`: every frame arriving on `from` goes out of `to` in GRE from `src` to `dst`,
    /// addressed to the MAC `dst_mac`.
    pub fn start(
        ns: &Netns,
        kind: Gre,
        from: &str,
        to: &str,
        (src, dst): ([u8; 4], [u8; 4]),
        dst_mac: [u8; 6],
    ) -> anyhow::Result<Self> {
        let (from, to) = (from.to_owned(), to.to_owned());
        let (rx, tx) = ns.run(move || anyhow::Ok((packet_socket(&from)?, packet_socket(&to)?)))??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut seq = 0u32;
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: buf is writable for its length.
                let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue; // the timeout: look at the flag
                }
                seq = seq.wrapping_add(1);
                let gre = kind.header(seq);
                let inner = &buf[..n as usize];
                let mut out = Vec::with_capacity(14 + 20 + gre.len() + inner.len());
                out.extend_from_slice(&dst_mac);
                out.extend_from_slice(&[2, 0, 0, 0, 9, 1, 0x08, 0x00]);
                let total = (20 + gre.len() + inner.len()) as u16;
                let mut ip = [0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[12..16].copy_from_slice(&src);
                ip[16..20].copy_from_slice(&dst);
                let sum = checksum::finish(checksum::sum(0, &ip));
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                out.extend_from_slice(&ip);
                out.extend_from_slice(&gre);
                out.extend_from_slice(inner);
                // SAFETY: out is readable for its length; tx is bound to its interface.
                unsafe { libc::send(tx.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
            }
        });
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for GreMirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
