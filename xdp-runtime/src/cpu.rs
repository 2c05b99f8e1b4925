//! Cores and CPU time: pinning workers, and the cost figures the summaries print.

/// Pins the calling thread to `core` (best effort: a failure is logged, not fatal).
pub fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            log::warn!("could not pin a worker to core {core}: {}", std::io::Error::last_os_error());
        }
    }
}

/// Cores this process may run on, in order.
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// CLOCK_MONOTONIC in microseconds: the clock of the XDP programs' `bpf_ktime_get_ns`.
pub fn monotonic_us() -> u64 {
    clock_us(libc::CLOCK_MONOTONIC)
}

/// CPU time (user + system) of the calling thread, in microseconds.
pub fn thread_cpu_us() -> u64 {
    clock_us(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (user + system) of the whole process, in microseconds.
pub fn process_cpu_us() -> u64 {
    clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn usage() -> Option<libc::rusage> {
    // SAFETY: getrusage fills the zeroed struct.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
    }
}

/// User-mode CPU time of the whole process, in microseconds: the process's own code, apart
/// from the kernel work its system calls do (on a veth test bed that includes the receiving
/// host's stack, which runs inside the sender's transmit call).
pub fn process_user_cpu_us() -> u64 {
    usage().map_or(0, |u| u.ru_utime.tv_sec as u64 * 1_000_000 + u.ru_utime.tv_usec as u64)
}

/// The process's peak resident set, in KiB.
pub fn peak_rss_kib() -> u64 {
    usage().map_or(0, |u| u.ru_maxrss as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = thread_cpu_us();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_us() > before, "a busy thread used CPU");
        assert!(process_cpu_us() >= thread_cpu_us());
        assert!(peak_rss_kib() > 0);
        assert!(process_user_cpu_us() > 0 && process_user_cpu_us() <= process_cpu_us() + 10_000);
        assert!(!allowed_cores().is_empty());
    }
}
