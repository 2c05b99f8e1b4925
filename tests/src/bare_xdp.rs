//! A bare XDP program — two instructions, `return ACTION` — attached with a bpf_link: the
//! bench's baseline for what an interface carries with *some* program attached (on veth an XDP
//! program switches the receive path to NAPI), so the copier's program is compared with the
//! cheapest possible one, not with no program at all.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::Context as _;

use crate::Netns;

/// What the program returns for every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Action {
    Drop = 1,
    Pass = 2,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// Native (driver) mode, as the copier attaches.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields used here (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// bpf(2) with `attr` laid into the zeroed `union bpf_attr` the kernel expects.
///
/// # Safety
/// Every pointer in `attr` must be valid, for the length given beside it, during the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: T) -> io::Result<OwnedFd> {
    const { assert!(size_of::<T>() <= size_of::<xdp_runtime::bpf::Attr>()) };
    let mut raw: xdp_runtime::bpf::Attr = [0; 16];
    // SAFETY: `T` is a plain #[repr(C)] struct no larger than `raw` (checked above).
    unsafe { std::ptr::write_unaligned(raw.as_mut_ptr().cast::<T>(), attr) };
    // SAFETY: the pointers in `raw` are this function's contract.
    let fd = unsafe { xdp_runtime::bpf::call(cmd, &mut raw) }?;
    // SAFETY: a fresh descriptor the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The attached program; dropping it detaches it (the link is released with its last fd).
pub struct BareXdp {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl BareXdp {
    /// Attaches `return action` to `iface` in namespace `ns`, in native mode.
    pub fn attach(ns: &Netns, iface: &str, action: Action) -> anyhow::Result<Self> {
        // r0 = action; exit
        let insns: [u64; 2] = [u64::from(0xb7u8) | ((action as i32 as u32 as u64) << 32), 0x95];
        let license = c"GPL";
        let name = format!("bare_{}", if action == Action::Pass { "pass" } else { "drop" });
        let mut prog_name = [0u8; 16];
        prog_name[..name.len()].copy_from_slice(name.as_bytes());
        let attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type: BPF_XDP,
            ..ProgLoad::default()
        };
        // SAFETY: `insns` and `license` outlive the call; the lengths match.
        let prog = unsafe { bpf(BPF_PROG_LOAD, attr) }.context("loading a bare XDP program")?;
        let iface = iface.to_owned();
        let prog_fd = prog.as_raw_fd() as u32;
        // Interface indexes are per namespace: look it up and attach from inside.
        let link = ns.run(move || -> anyhow::Result<OwnedFd> {
            let index = xdp_runtime::iface::index(&iface)?;
            let attr = LinkCreate { prog_fd, target_ifindex: index, attach_type: BPF_XDP, flags: XDP_FLAGS_DRV_MODE };
            // SAFETY: this command's attr holds no pointer.
            unsafe { bpf(BPF_LINK_CREATE, attr) }.with_context(|| format!("attaching a bare XDP program to {iface}"))
        })??;
        Ok(Self { _link: link, _prog: prog })
    }
}
