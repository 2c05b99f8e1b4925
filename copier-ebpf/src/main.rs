//! The copier's XDP programs on the online interface.
//!
//! Copy mode (`copier`): every frame goes on to the kernel stack untouched (`XDP_PASS`);
//! production traffic is never stolen, delayed or altered. Segments addressed to an online
//! endpoint are copied into a ring buffer (`ebpf-capture`).
//!
//! Mirror mode (`copier_mirror`), for a NIC that only receives mirrored traffic: segments
//! addressed to an online endpoint (and, when answers are compared, those it sent) are
//! redirected into the AF_XDP socket of their RX queue, no copy at all (a jumbo frame in
//! several buffers is copied into the ring instead); other frames are passed or dropped as
//! configured.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_adjust_head},
    macros::{classifier, map, xdp},
    maps::{HashMap, PerCpuArray, RingBuf, XskMap},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use common::{
    counters::{CopierCounter, Counter},
    encap::{inner_frame, Decap, Inner},
    endpoint::Endpoint,
    maps::{CAPTURE_RING_BYTES, MAX_ENDPOINTS, MAX_QUEUES},
    parse::{parse_ethernet, parse_ipv4, parse_ipv6, ETH_HLEN, ETH_P_IPV6},
};
use ebpf_capture::Copied;

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CopierCounter::ALL.len() as u32, 0);

#[map(name = "ONLINE_ENDPOINTS")]
static ONLINE_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "CAPTURE")]
static CAPTURE: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// `common::maps::MIRROR_DROP_OTHER`, set by the loader.
#[unsafe(no_mangle)]
static MIRROR_DROP_OTHER: u8 = 0;

/// `common::maps::MIRROR_ANSWERS`, set by the loader.
#[unsafe(no_mangle)]
static MIRROR_ANSWERS: u8 = 0;

/// `common::maps::DECAP_*`, set by the loader.
#[unsafe(no_mangle)]
static DECAP_VXLAN_PORT: u16 = 0;
#[unsafe(no_mangle)]
static DECAP_GENEVE_PORT: u16 = 0;
#[unsafe(no_mangle)]
static DECAP_GRE: u8 = 0;

#[inline(always)]
fn count(counter: CopierCounter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, and XDP programs do not preempt each other on one CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn is_online(dst: &Endpoint) -> bool {
    // SAFETY: the values are plain bytes that we only test for presence.
    unsafe { ONLINE_ENDPOINTS.get(dst).is_some() || ONLINE_ENDPOINTS.get(Endpoint::any(dst.port)).is_some() }
}

/// `frags`: on a jumbo-MTU link a frame may span several buffers (multi-buffer XDP); the
/// headers are in the first, and `bpf_xdp_load_bytes` reads across all of them.
#[xdp(frags)]
pub fn copier(ctx: XdpContext) -> u32 {
    count(CopierCounter::Seen);
    // SAFETY: data..data_end is the frame the kernel handed us.
    match unsafe { parse_ethernet(ctx.data(), ctx.data_end()) } {
        Ok(Some(segment)) if is_online(&segment.dst) => {
            count(CopierCounter::Matched);
            counted(ebpf_capture::copy_xdp(&CAPTURE, &ctx));
        }
        Ok(_) => {}
        Err(reason) => {
            count(CopierCounter::Malformed);
            debug!(&ctx, "copier: malformed frame: {}", reason.as_str());
        }
    }
    count(CopierCounter::Passed);
    xdp_action::XDP_PASS
}

/// `frags`: a jumbo mirror arrives in several buffers; AF_XDP takes one buffer a frame, so such
/// a frame goes through the capture ring instead, as in copy mode.
#[xdp(frags)]
pub fn copier_mirror(ctx: XdpContext) -> u32 {
    count(CopierCounter::Seen);
    // SAFETY: reading globals the loader may have set (volatile: they are not constants).
    let decap = unsafe {
        Decap {
            vxlan_port: core::ptr::read_volatile(&DECAP_VXLAN_PORT),
            geneve_port: core::ptr::read_volatile(&DECAP_GENEVE_PORT),
            gre: core::ptr::read_volatile(&DECAP_GRE) != 0,
        }
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    let inner = if decap.is_off() {
        Ok(None)
    } else {
        // SAFETY: data..data_end is the frame the kernel handed us.
        unsafe { inner_frame(start, end, &decap) }
    };
    // SAFETY (each arm): data..data_end is the frame the kernel handed us; a tunnel's mirrored
    // frame lies within it, at the offset its parser checked.
    let parsed = match inner {
        Ok(None) => unsafe { parse_ethernet(start, end) },
        Ok(Some(Inner::Ethernet(offset))) => {
            count(CopierCounter::Decapsulated);
            unsafe { parse_ethernet(start + offset, end) }
        }
        Ok(Some(Inner::Ip { offset, ethertype })) => {
            count(CopierCounter::Decapsulated);
            if ethertype == ETH_P_IPV6 {
                unsafe { parse_ipv6(start, end, offset) }
            } else {
                unsafe { parse_ipv4(start, end, offset) }
            }
        }
        Err(reason) => Err(reason),
    };
    match parsed {
        // SAFETY: reading a global the loader may have set (volatile: it is not a constant).
        Ok(Some(segment))
            if is_online(&segment.dst)
                || (unsafe { core::ptr::read_volatile(&MIRROR_ANSWERS) } != 0 && is_online(&segment.src)) =>
        {
            count(CopierCounter::Matched);
            if let Ok(Some(inner)) = inner {
                if !strip_tunnel(&ctx, inner) {
                    count(CopierCounter::Malformed);
                    return other(&ctx);
                }
            }
            if ebpf_capture::is_multi_buffer(&ctx) {
                counted(ebpf_capture::copy_xdp(&CAPTURE, &ctx));
                return xdp_action::XDP_DROP;
            }
            // With no socket on this queue the helper returns the flag's action: an error here.
            match XSKS.redirect(ctx.rx_queue_index(), xdp_action::XDP_PASS as u64) {
                Ok(action) => {
                    count(CopierCounter::Redirected);
                    return action;
                }
                Err(_) => count(CopierCounter::NoSocket),
            }
        }
        Ok(_) => {}
        Err(reason) => {
            count(CopierCounter::Malformed);
            debug!(&ctx, "copier: malformed frame: {}", reason.as_str());
        }
    }
    other(&ctx)
}

/// What becomes of a mirrored frame that is not redirected: `--mirror-other`.
#[inline(always)]
fn other(_ctx: &XdpContext) -> u32 {
    // SAFETY: reading a global the loader may have set (volatile: it is not a constant).
    if unsafe { core::ptr::read_volatile(&MIRROR_DROP_OTHER) } != 0 {
        count(CopierCounter::Dropped);
        return xdp_action::XDP_DROP;
    }
    count(CopierCounter::Passed);
    xdp_action::XDP_PASS
}

/// Leaves only the mirrored frame of a tunnel packet, so userspace sees it as if it had
/// arrived alone: the outer headers go, and an IP packet gets an Ethernet header (zero
/// addresses, which nothing reads). False if the kernel refused.
#[inline(always)]
fn strip_tunnel(ctx: &XdpContext, inner: Inner) -> bool {
    let (delta, ethertype) = match inner {
        Inner::Ethernet(offset) => (offset, None),
        Inner::Ip { offset, ethertype } => (offset - ETH_HLEN, Some(ethertype)),
    };
    // SAFETY: moving the frame's start forward within it (offset ≤ MAX_INNER_OFFSET).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta as i32) } != 0 {
        return false;
    }
    if let Some(ethertype) = ethertype {
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + ETH_HLEN > end {
            return false;
        }
        let mut header = [0u8; ETH_HLEN];
        header[12..].copy_from_slice(&ethertype.to_be_bytes());
        // SAFETY: the check above keeps the write within the frame.
        unsafe { core::ptr::write_unaligned(start as *mut [u8; ETH_HLEN], header) };
    }
    true
}

/// Copy mode, comparing answers: production's answers leave through the online interface,
/// which XDP never sees, so a TC egress program (a tcx link) copies the online server's own
/// segments into the same capture ring. It never alters a verdict: `TC_ACT_UNSPEC` (tcx's
/// "next") hands the packet on to any later program, and with none it leaves as it would have.
#[classifier]
pub fn copier_answers(ctx: TcContext) -> i32 {
    // SAFETY: data..data_end is the packet's linear part, which holds a locally built TCP
    // segment's headers.
    if let Ok(Some(segment)) = unsafe { parse_ethernet(ctx.data(), ctx.data_end()) } {
        if is_online(&segment.src) {
            count(CopierCounter::AnswersCopied);
            // A GSO packet is longer than a record can say: it is truncated like any other.
            let frame_len = (ctx.len() as usize).min(usize::from(u16::MAX));
            let skb = ctx.skb.skb;
            // SAFETY: `to` is a reserved ring entry of at least `len` bytes, `len` ≤ skb->len.
            counted(ebpf_capture::copy(&CAPTURE, frame_len, |to, len| unsafe {
                bpf_skb_load_bytes(skb.cast(), 0, to, len) == 0
            }));
        }
    }
    TC_ACT_UNSPEC
}

/// Counts what became of a frame copied into the capture ring.
#[inline(always)]
fn counted(copied: Copied) {
    match copied {
        Copied::Whole => count(CopierCounter::Copied),
        Copied::Truncated => {
            count(CopierCounter::Copied);
            count(CopierCounter::Truncated);
        }
        Copied::RingFull => count(CopierCounter::RingFull),
        Copied::Nothing => {}
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
