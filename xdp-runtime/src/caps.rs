//! The capabilities the binaries need, checked before anything is set up, so that a missing
//! one is named instead of surfacing as EPERM from a syscall deep inside.

use anyhow::bail;

/// The ones these programs use (linux/capability.h numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Attaching XDP programs, netlink changes.
    NetAdmin = 12,
    /// Raw IP and AF_XDP sockets.
    NetRaw = 13,
    /// Pinning an AF_XDP UMEM beyond the memlock limit.
    IpcLock = 14,
    /// The verifier's pointer arithmetic in the XDP programs.
    Perfmon = 38,
    /// Loading programs and creating maps.
    Bpf = 39,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::NetRaw => "CAP_NET_RAW",
            Self::IpcLock => "CAP_IPC_LOCK",
            Self::Perfmon => "CAP_PERFMON",
            Self::Bpf => "CAP_BPF",
        }
    }
}

/// The effective set, from `/proc/self/status`.
fn effective() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim);
    Ok(u64::from_str_radix(hex.ok_or_else(|| anyhow::anyhow!("no CapEff in /proc/self/status"))?, 16)?)
}

fn memlock_unlimited() -> bool {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    ok && limit.rlim_cur == libc::RLIM_INFINITY
}

/// Fails, naming what is missing, unless the process has every one of `needed` (CAP_IPC_LOCK
/// also counts as present without a memlock limit: an AF_XDP UMEM pins 4 MiB to send, 16 to receive).
pub fn require(needed: &[Cap], what: &str) -> anyhow::Result<()> {
    let have = effective()?;
    let missing: Vec<&str> = needed
        .iter()
        .filter(|&&c| have & (1 << c as u64) == 0 && !(c == Cap::IpcLock && memlock_unlimited()))
        .map(|c| c.name())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{what} needs {} (root has them; grant them to another user, e.g. with systemd's \
             AmbientCapabilities=; CAP_IPC_LOCK may instead be an unlimited memlock limit)",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_and_names_are_the_kernels() {
        effective().unwrap();
        assert_eq!((Cap::Bpf as u64, Cap::Bpf.name()), (39, "CAP_BPF"));
        assert_eq!(Cap::Perfmon as u64, 38);
    }
}
