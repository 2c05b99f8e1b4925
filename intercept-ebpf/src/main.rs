//! The intercept's programs.
//!
//! `intercept`, XDP on the assistant host's interface towards the test server: segments sent by
//! a test-server endpoint are the replies the copiers need. They are redirected into the AF_XDP
//! socket of their RX queue and never reach the kernel stack, so they go no further (a jumbo
//! reply in several buffers, which these sockets do not take, is copied into the ring and
//! dropped). Everything else is none of our business and passes untouched.
//!
//! `intercept_egress`, TC egress on the test host itself (`--on-target`): a test-server segment
//! to a client endpoint that a copier owns is copied into a ring buffer and dropped before it
//! leaves. Every other packet leaves as it would have.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_PREALLOC, TC_ACT_UNSPEC},
    helpers::generated::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_load_bytes},
    macros::{classifier, map, xdp},
    maps::{HashMap, PerCpuArray, RingBuf, XskMap},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use common::{
    counters::{Counter, InterceptCounter},
    endpoint::Endpoint,
    maps::{CAPTURE_RING_BYTES, MAX_ENDPOINTS, MAX_OWNED_CLIENTS, MAX_QUEUES},
    parse::parse_ethernet,
};
use ebpf_capture::Copied;

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(InterceptCounter::ALL.len() as u32, 0);

#[map(name = "TARGET_ENDPOINTS")]
static TARGET_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// Client endpoints copiers own (port 0: the whole address), on the test host. Entries are
/// allocated as they come: most runs own a few thousand.
#[map(name = "OWNED_CLIENTS")]
static OWNED_CLIENTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_OWNED_CLIENTS, BPF_F_NO_PREALLOC);

/// The stolen replies: on the test host all of them, on an assistant host the jumbo ones.
#[map(name = "CAPTURE")]
static CAPTURE: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

#[inline(always)]
fn count(counter: InterceptCounter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, and XDP programs do not preempt each other on one CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn is_target(src: &Endpoint) -> bool {
    // SAFETY: the values are plain bytes that we only test for presence.
    unsafe { TARGET_ENDPOINTS.get(src).is_some() || TARGET_ENDPOINTS.get(Endpoint::any(src.port)).is_some() }
}

/// `frags`: on a jumbo link a reply may span several buffers; its headers are in the first.
#[xdp(frags)]
pub fn intercept(ctx: XdpContext) -> u32 {
    count(InterceptCounter::Seen);
    // SAFETY: data..data_end is the frame the kernel handed us.
    match unsafe { parse_ethernet(ctx.data(), ctx.data_end()) } {
        Ok(Some(segment)) if is_target(&segment.src) => {
            count(InterceptCounter::Matched);
            if ebpf_capture::is_multi_buffer(&ctx) {
                steal(ebpf_capture::copy_xdp(&CAPTURE, &ctx));
                return xdp_action::XDP_DROP;
            }
            let queue = ctx.rx_queue_index();
            let mac = stamp_arrival(&ctx);
            // With no socket on this queue the helper returns XDP_PASS (the flag) instead.
            match XSKS.redirect(queue, xdp_action::XDP_PASS as u64) {
                Ok(action) => {
                    count(InterceptCounter::Redirected);
                    return action;
                }
                Err(_) => {
                    // The kernel gets the frame as it came.
                    restore_mac(&ctx, mac);
                    count(InterceptCounter::NoSocket);
                }
            }
        }
        Ok(_) => {}
        Err(reason) => {
            count(InterceptCounter::Malformed);
            debug!(&ctx, "intercept: malformed frame: {}", reason.as_str());
        }
    }
    count(InterceptCounter::Passed);
    xdp_action::XDP_PASS
}

/// Writes the time over the frame's destination MAC ([`common::facts::ARRIVAL_STAMP`]) and
/// returns what was there.
#[inline(always)]
fn stamp_arrival(ctx: &XdpContext) -> Option<[u8; 4]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 4 > end {
        return None;
    }
    let at = start as *mut [u8; 4];
    // SAFETY: the 4 bytes are within data..data_end, checked above for the verifier.
    unsafe {
        let mac = *at;
        *at = ((bpf_ktime_get_ns() / 1000) as u32).to_ne_bytes();
        Some(mac)
    }
}

#[inline(always)]
fn restore_mac(ctx: &XdpContext, mac: Option<[u8; 4]>) {
    let (start, end) = (ctx.data(), ctx.data_end());
    if let Some(mac) = mac.filter(|_| start + 4 <= end) {
        // SAFETY: as in stamp_arrival.
        unsafe { *(start as *mut [u8; 4]) = mac };
    }
}

#[inline(always)]
fn is_owned(dst: &Endpoint) -> bool {
    let whole = Endpoint { port: 0, ..*dst };
    // SAFETY: the values are plain bytes that we only test for presence.
    unsafe { OWNED_CLIENTS.get(dst).is_some() || OWNED_CLIENTS.get(&whole).is_some() }
}

/// Counts a reply taken through the ring, by what became of its copy.
#[inline(always)]
fn steal(copied: Copied) {
    match copied {
        Copied::Whole => {}
        Copied::Truncated => count(InterceptCounter::Truncated),
        Copied::RingFull | Copied::Nothing => count(InterceptCounter::Lost),
    }
    count(InterceptCounter::Stolen);
}

/// No interface has this index: a packet redirected to it is freed by the kernel.
const NOWHERE: u32 = u32::MAX;

/// TC egress on the test host: the replies to owned client endpoints are copied to userspace
/// and dropped (even when the ring is full: they must not reach the real clients). A GSO
/// packet is copied truncated, its headers whole.
///
/// Dropped by a redirect to [`NOWHERE`], not by `TC_ACT_SHOT`: tcx reports a shot packet to
/// the sender as a failed transmit, and TCP then keeps the data unsent (the session stalls
/// with the copier acknowledging what the server thinks it never sent). A redirect reports
/// success whatever becomes of the packet.
#[classifier]
pub fn intercept_egress(ctx: TcContext) -> i32 {
    count(InterceptCounter::Seen);
    // SAFETY: data..data_end is the packet's linear part, which holds a locally built TCP
    // segment's headers.
    match unsafe { parse_ethernet(ctx.data(), ctx.data_end()) } {
        Ok(Some(segment)) if is_target(&segment.src) => {
            count(InterceptCounter::Matched);
            if is_owned(&segment.dst) {
                let frame_len = (ctx.len() as usize).min(usize::from(u16::MAX));
                let skb = ctx.skb.skb;
                // SAFETY: `to` is a reserved ring entry of at least `len` bytes, `len` ≤ skb->len.
                let copied = ebpf_capture::copy(&CAPTURE, frame_len, |to, len| unsafe {
                    bpf_skb_load_bytes(skb.cast(), 0, to, len) == 0
                });
                steal(copied);
                // SAFETY: a helper call with plain arguments.
                return unsafe { bpf_redirect(NOWHERE, 0) } as i32;
            }
        }
        Ok(_) => {}
        Err(reason) => {
            count(InterceptCounter::Malformed);
            debug!(&ctx, "intercept: malformed packet: {}", reason.as_str());
        }
    }
    count(InterceptCounter::Passed);
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
