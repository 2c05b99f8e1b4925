//! The copier's XDP program on the online interface.
//!
//! Copy mode: every frame goes on to the kernel stack untouched (`XDP_PASS`); production traffic
//! is never stolen, delayed or altered. Segments addressed to an online endpoint are counted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use common::{
    counters::{CopierCounter, Counter},
    endpoint::Endpoint,
    maps::MAX_ENDPOINTS,
    parse::parse_ethernet,
};

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CopierCounter::ALL.len() as u32, 0);

#[map(name = "ONLINE_ENDPOINTS")]
static ONLINE_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

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

#[xdp]
pub fn copier(ctx: XdpContext) -> u32 {
    count(CopierCounter::Seen);
    // SAFETY: data..data_end is the frame the kernel handed us.
    match unsafe { parse_ethernet(ctx.data(), ctx.data_end()) } {
        Ok(Some(segment)) if is_online(&segment.dst) => count(CopierCounter::Matched),
        Ok(_) => {}
        Err(reason) => {
            count(CopierCounter::Malformed);
            debug!(&ctx, "copier: malformed frame: {}", reason.as_str());
        }
    }
    count(CopierCounter::Passed);
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
