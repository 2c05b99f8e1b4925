//! The raw bpf(2) system call, for what aya does not expose; and with it, detaching an XDP
//! bpf_link that another process holds, for `--force`, and running an XDP program on a crafted
//! frame, for tests of its verdicts.
//!
//! aya can list links but does not expose a link's interface, so we ask the kernel directly:
//! walk link ids, keep the XDP link on our interface running the program netlink reported, and
//! `BPF_LINK_DETACH` it.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// `union bpf_attr` is large; the kernel requires unused bytes to be zero.
pub type Attr = [u64; 16];

/// bpf(2) with command `cmd`; the kernel's return value (often a new descriptor).
///
/// # Safety
/// The kernel reads and writes through any pointer `attr` holds for `cmd` (an info buffer, a
/// program's instructions, a log buffer): each must be valid for the length given beside it
/// for the duration of the call. Unused bytes must be zero.
pub unsafe fn call(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is as large as the kernel reads; the pointers in it are the caller's contract.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<Attr>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Runs XDP program `prog` once on `frame`, on no device (BPF_PROG_TEST_RUN): its verdict and
/// the frame as the program left it.
pub fn test_run_xdp(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
    // Room for a program that grows the frame.
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr: Attr = [0; 16];
    attr[0] = u64::from(prog.as_raw_fd() as u32); // prog_fd; retval above it
    attr[1] = frame.len() as u64 | (out.len() as u64) << 32; // data_size_in, data_size_out
    attr[2] = frame.as_ptr() as u64; // data_in
    attr[3] = out.as_mut_ptr() as u64; // data_out
    attr[4] = 1; // repeat
                 // SAFETY: data_in and data_out point at live buffers of the sizes given.
    unsafe { call(BPF_PROG_TEST_RUN, &mut attr)? };
    out.truncate((attr[1] >> 32) as usize);
    Ok(((attr[0] >> 32) as u32, out))
}

fn next_link_id(start: u32) -> io::Result<Option<u32>> {
    let mut attr: Attr = [0; 16];
    attr[0] = start as u64; // start_id
                            // SAFETY: this command's attr holds no pointer.
    match unsafe { call(BPF_LINK_GET_NEXT_ID, &mut attr) } {
        Ok(_) => Ok(Some((attr[0] >> 32) as u32)), // next_id follows start_id
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err),
    }
}

fn link_fd(id: u32) -> io::Result<OwnedFd> {
    let mut attr: Attr = [0; 16];
    attr[0] = id as u64;
    // SAFETY: this command's attr holds no pointer.
    let fd = unsafe { call(BPF_LINK_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: the kernel returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `struct bpf_link_info` up to the XDP member: type, id, prog_id, then the union at offset 16.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    kind: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    xdp_ifindex: u32,
    _rest: [u32; 7],
}

fn link_info(fd: &OwnedFd) -> io::Result<LinkInfo> {
    let mut info = LinkInfo::default();
    let mut attr: Attr = [0; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((size_of::<LinkInfo>() as u64) << 32); // bpf_fd, info_len
    attr[1] = (&mut info as *mut LinkInfo) as u64;
    // SAFETY: attr points at `info`, as long as the length it gives, alive for the call.
    unsafe { call(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(info)
}

/// Detaches the XDP link on `if_index` that runs `prog_id`. Returns whether one was found.
///
/// Interface indexes are per network namespace while link ids are global, so the program id
/// from this namespace's netlink view is matched as well.
pub fn detach_xdp_link(if_index: u32, prog_id: u32) -> io::Result<bool> {
    let mut id = 0;
    while let Some(next) = next_link_id(id)? {
        id = next;
        let fd = match link_fd(id) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue, // gone meanwhile
            Err(err) => return Err(err),
        };
        let info = link_info(&fd)?;
        if info.kind == BPF_LINK_TYPE_XDP && info.xdp_ifindex == if_index && info.prog_id == prog_id {
            let mut attr: Attr = [0; 16];
            attr[0] = fd.as_raw_fd() as u64;
            // SAFETY: this command's attr holds no pointer.
            unsafe { call(BPF_LINK_DETACH, &mut attr) }?;
            return Ok(true);
        }
    }
    Ok(false)
}
