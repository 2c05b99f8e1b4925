//! The intercept's XDP program on the assistant host's interface towards the test server.
//!
//! Segments sent by a test-server endpoint are the replies the copiers need: they are
//! redirected into the AF_XDP socket of their RX queue and never reach the kernel stack, so they
//! go no further. Everything else is none of our business and passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use common::{
    counters::{Counter, InterceptCounter},
    endpoint::Endpoint,
    maps::{MAX_ENDPOINTS, MAX_QUEUES},
    parse::parse_ethernet,
};

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(InterceptCounter::ALL.len() as u32, 0);

#[map(name = "TARGET_ENDPOINTS")]
static TARGET_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

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

#[xdp]
pub fn intercept(ctx: XdpContext) -> u32 {
    count(InterceptCounter::Seen);
    // SAFETY: data..data_end is the frame the kernel handed us.
    match unsafe { parse_ethernet(ctx.data(), ctx.data_end()) } {
        Ok(Some(segment)) if is_target(&segment.src) => {
            count(InterceptCounter::Matched);
            let queue = ctx.rx_queue_index();
            // With no socket on this queue the helper returns XDP_PASS (the flag) instead.
            match XSKS.redirect(queue, xdp_action::XDP_PASS as u64) {
                Ok(action) => {
                    count(InterceptCounter::Redirected);
                    return action;
                }
                Err(_) => count(InterceptCounter::NoSocket),
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
