//! What waking a thread costs on this machine: two threads pass a token back and forth through
//! a pair of eventfds, on two CPUs and on one. At recorded pace each round trip of each session
//! is a wake-up for both tools (the copier's, the intercept's, the test server's), so this is
//! the floor under their CPU per session there; on a VM it is mostly the hypervisor's.

use std::{os::fd::AsRawFd as _, time::Duration};

/// CPU one side spends per round trip (its write, its blocked read, being woken), µs.
#[derive(Clone, Copy, Debug)]
pub struct WakeCost {
    pub across_cpus_us: f64,
    pub same_cpu_us: f64,
}

const ROUNDS: u32 = 20_000;

pub fn measure() -> anyhow::Result<WakeCost> {
    let cpus = allowed_cpus();
    anyhow::ensure!(!cpus.is_empty(), "no CPU allowed");
    let other = *cpus.get(1).unwrap_or(&cpus[0]);
    let cost =
        (|| Ok(WakeCost { across_cpus_us: ping_pong(cpus[0], other)?, same_cpu_us: ping_pong(cpus[0], cpus[0])? }))();
    // The bench's own thread runs where it ran before.
    set_affinity(&cpus);
    cost
}

impl WakeCost {
    pub fn markdown(&self) -> String {
        format!(
            "On this machine a thread that wakes another and waits to be woken back spends {:.1} µs of CPU per \
             round trip when the two run on different CPUs, {:.1} µs on one (eventfds, {ROUNDS} rounds): at \
             recorded pace each round trip of a session costs both tools such wake-ups.\n\n",
            self.across_cpus_us, self.same_cpu_us
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"across_cpus_us": self.across_cpus_us, "same_cpu_us": self.same_cpu_us})
    }
}

/// The measuring side's CPU per round trip, µs, with it on `mine` and its peer on `theirs`.
fn ping_pong(mine: usize, theirs: usize) -> anyhow::Result<f64> {
    let (ping, pong) = (event_fd()?, event_fd()?);
    let (ping_fd, pong_fd) = (ping.as_raw_fd(), pong.as_raw_fd());
    let peer = std::thread::spawn(move || {
        pin(theirs);
        for _ in 0..ROUNDS {
            take(ping_fd);
            give(pong_fd);
        }
    });
    pin(mine);
    let start = thread_cpu();
    for _ in 0..ROUNDS {
        give(ping_fd);
        take(pong_fd);
    }
    let spent = thread_cpu() - start;
    peer.join().map_err(|_| anyhow::anyhow!("the ping-pong peer panicked"))?;
    Ok(spent.as_secs_f64() * 1e6 / f64::from(ROUNDS))
}

fn event_fd() -> anyhow::Result<std::os::fd::OwnedFd> {
    // SAFETY: eventfd has no memory preconditions; the fd is owned from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    anyhow::ensure!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

fn give(fd: i32) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    let n = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8, "eventfd write: {}", std::io::Error::last_os_error());
}

/// Blocks until the peer gave.
fn take(fd: i32) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    assert_eq!(n, 8, "eventfd read: {}", std::io::Error::last_os_error());
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: fills a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: fills a live cpu_set_t of the size given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size_of_val(&set), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: reads the set just filled.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

fn set_affinity(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: as above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: passes a live set of the size given; pid 0 is this thread.
    let _ = unsafe { libc::sched_setaffinity(0, size_of_val(&set), &set) };
}

fn pin(cpu: usize) {
    set_affinity(&[cpu]);
}
