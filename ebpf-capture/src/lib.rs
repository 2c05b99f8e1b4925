//! Copying a frame into a capture ring, shared by the eBPF programs that copy frames to
//! userspace (the copier's copy mode, answers and jumbo mirror frames, the intercept's replies).
//!
//! Records are [`CaptureRecordOf`]s of three sizes (small, a 1500-byte MTU's, jumbo); only the
//! record that finds the ring empty wakes the reader, which sleeps in poll(2) otherwise (a
//! wake-up per record cost half the rate).
#![no_std]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    },
    maps::RingBuf,
    programs::XdpContext,
};
use common::capture::{wakes_reader, CaptureRecordOf, CAPTURE_BYTES, JUMBO_CAPTURE_BYTES, SMALL_CAPTURE_BYTES};

/// What became of a frame: the callers count it in their own counters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// In the ring whole.
    Whole,
    /// In the ring, cut to a full record's size.
    Truncated,
    /// Not copied: the ring was full (userspace fell behind).
    RingFull,
    /// Not copied: the frame was empty or its bytes could not be read.
    Nothing,
}

/// Copies a frame of `frame_len` bytes into `ring`, with `load(to, len)` reading its first
/// `len` bytes: in the smallest record it fits (truncated past a jumbo record's size).
#[inline(always)]
pub fn copy(ring: &RingBuf, frame_len: usize, load: impl Fn(*mut core::ffi::c_void, u32) -> bool) -> Copied {
    // Volatile: the verifier must see the length as a bounded number, not as a comparison of
    // packet pointers (which is what LLVM turns `len > 0` into otherwise).
    // SAFETY: reading a local.
    let frame_len = unsafe { core::ptr::read_volatile(&frame_len) };
    if frame_len == 0 {
        return Copied::Nothing;
    }
    if frame_len <= SMALL_CAPTURE_BYTES {
        copy_into::<SMALL_CAPTURE_BYTES>(ring, frame_len, load)
    } else if frame_len <= CAPTURE_BYTES {
        copy_into::<CAPTURE_BYTES>(ring, frame_len, load)
    } else {
        copy_into::<JUMBO_CAPTURE_BYTES>(ring, frame_len, load)
    }
}

/// Copies an XDP frame whole, every buffer of it (a jumbo frame in a multi-buffer program
/// spans several): see [`copy`].
#[inline(always)]
pub fn copy_xdp(ring: &RingBuf, ctx: &XdpContext) -> Copied {
    // SAFETY: the context is the kernel's; the length covers every buffer of the frame.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    // SAFETY: `to` is a reserved ring entry of at least `len` bytes, `len` ≤ the frame's.
    copy(ring, frame_len, |to, len| unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, to, len) == 0 })
}

/// Whether the XDP frame spans several buffers (a jumbo frame in a multi-buffer program), which
/// an AF_XDP socket without multi-buffer support does not take.
#[inline(always)]
pub fn is_multi_buffer(ctx: &XdpContext) -> bool {
    // SAFETY: the context is the kernel's.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    whole > ctx.data_end() - ctx.data()
}

#[inline(always)]
fn copy_into<const N: usize>(
    ring: &RingBuf,
    frame_len: usize,
    load: impl Fn(*mut core::ffi::c_void, u32) -> bool,
) -> Copied {
    let len = if frame_len > N { N } else { frame_len };
    if len == 0 {
        return Copied::Nothing;
    }
    let Some(mut entry) = ring.reserve::<CaptureRecordOf<N>>(0) else {
        return Copied::RingFull;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved ring entry; `len` is in 1..=its data array's size
    // and at most the frame's length.
    let loaded = unsafe {
        (*record).len = len as u16;
        (*record).frame_len = frame_len as u16;
        (*record).at_us = (bpf_ktime_get_ns() / 1000) as u32;
        load((*record).data.as_mut_ptr().cast(), len as u32)
    };
    if !loaded {
        entry.discard(0);
        return Copied::Nothing;
    }
    let avail = ring.query(BPF_RB_AVAIL_DATA as u64);
    let wake =
        if wakes_reader(avail, size_of::<CaptureRecordOf<N>>()) { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    entry.submit(wake as u64);
    if frame_len > N {
        Copied::Truncated
    } else {
        Copied::Whole
    }
}
