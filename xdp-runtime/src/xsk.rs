//! Binding an AF_XDP socket, shared by the receive and transmit paths: zero-copy where the
//! driver allows, copy mode otherwise (veth), need_wakeup always, and our own XDP program
//! (libxdp's default one is never loaded).

use anyhow::Context as _;
use xsk_rs::{
    config::{BindFlags, Interface, LibxdpFlags, QueueSize, SocketConfig},
    socket::{RxQueue, Socket, TxQueue},
    umem::{CompQueue, FillQueue, Umem},
};

/// A bound socket's rings.
pub struct Bound {
    pub zero_copy: bool,
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fill: FillQueue,
    pub completion: CompQueue,
}

/// Binds a socket on `umem` to `iface`'s queue `queue` with rings of `rx_ring` and `tx_ring`
/// entries (powers of two).
///
/// Safe, although `Socket::new` is not: its one condition (a UMEM shared by sockets bound to a
/// queue already bound must not load libxdp's program, or dropping them double-frees) is met by
/// `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`, set on every bind. The rings keep the UMEM alive
/// themselves. What stays the caller's duty is xsk-rs's usage rule: hand the rings only
/// descriptors of this UMEM, and none twice before the kernel has returned it.
pub fn bind(umem: &Umem, iface: &str, queue: u32, rx_ring: u32, tx_ring: u32) -> anyhow::Result<Bound> {
    let name: Interface = iface.parse().context("interface name")?;
    let bind = |extra: BindFlags| -> anyhow::Result<_> {
        let config = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(rx_ring)?)
            .tx_queue_size(QueueSize::new(tx_ring)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | extra)
            .build();
        // SAFETY: XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD is set above, as `Socket::new` requires of
        // a UMEM shared with a bound queue.
        Ok(unsafe { Socket::new(config, umem, &name, queue) }?)
    };
    let (zero_copy, (tx, rx, rings)) = match bind(BindFlags::XDP_ZEROCOPY) {
        Ok(socket) => (true, socket),
        Err(zc_err) => {
            log::debug!("{iface} queue {queue}: zero-copy bind failed ({zc_err:#}); using copy mode");
            (
                false,
                bind(BindFlags::XDP_COPY)
                    .with_context(|| format!("binding an AF_XDP socket to {iface} queue {queue}"))?,
            )
        }
    };
    let (fill, completion) = rings.context("the socket came without fill and completion rings")?;
    Ok(Bound { zero_copy, tx, rx, fill, completion })
}
