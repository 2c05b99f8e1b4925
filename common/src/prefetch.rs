//! Cache prefetch hints: a session's state is out of cache by the time its next packet comes,
//! and a received frame is in the cache of the core whose NAPI wrote it. Loading a batch's
//! worth at once overlaps the misses instead of taking them in turn.

/// Bytes of a cache line on the machines this runs on.
const CACHE_LINE: usize = 64;

/// Starts loading the `bytes` from `start` into the cache.
pub fn lines<T>(start: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes).step_by(CACHE_LINE) {
        // SAFETY: a prefetch is a hint: it reads nothing and faults on nothing, whatever the
        // address (`wrapping_add` keeps even a computed one free of undefined behaviour).
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                start.cast::<i8>().wrapping_add(offset),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}
