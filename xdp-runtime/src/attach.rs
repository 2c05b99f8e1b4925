//! Attaching an XDP program without trampling someone else's.
//!
//! The kernel already refuses a bpf_link over an existing program (`EBUSY`); we look first so
//! the refusal names the program, and with `force` remove it (netlink-attached or link-held)
//! before attaching ours.

use aya::programs::{links::LinkType, ProgramError, Xdp, XdpMode};

use crate::{bpf, netlink};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no network interface named {0:?}")]
    NoSuchInterface(String),
    #[error(
        "{iface} already runs XDP program id {id} ({name}, {mode} mode), which this process did not \
         attach; refusing to replace it (pass --force to replace it)"
    )]
    Foreign { iface: String, id: u32, name: String, mode: &'static str },
    #[error("could not remove XDP program id {id} from {iface}: {source}")]
    Remove { iface: String, id: u32, source: std::io::Error },
    #[error("could not query the XDP program on {iface}: {source}")]
    Query { iface: String, source: std::io::Error },
    #[error("could not attach the XDP program to {iface}: {source}")]
    Attach { iface: String, source: ProgramError },
    #[error(
        "{iface}'s driver takes no XDP program at MTU {mtu}: it cannot hand a program a frame in \
         several buffers (multi-buffer XDP); lower the MTU (ip link set {iface} mtu 3000), or for \
         jumbo frames use a NIC whose driver supports multi-buffer XDP, or run the intercept on the \
         test host (--on-target)"
    )]
    MtuTooLarge { iface: String, mtu: u32 },
}

/// Whether `err` or an error it wraps is the OS error `code`.
fn has_os_error(err: &(dyn std::error::Error + 'static), code: i32) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(code) {
            return true;
        }
        next = e.source();
    }
    false
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Held by a bpf_link: the kernel detaches it when this process exits, however it exits.
    Link,
    /// Netlink fallback (old kernel): detached on orderly exit only.
    Netlink,
}

fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == id)
        .and_then(|info| info.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown name".into())
}

/// Attaches the loaded `program` to `iface` in native mode, refusing (or with `force`,
/// removing) a program already there.
pub fn attach(program: &mut Xdp, iface: &str, force: bool) -> Result<Attached, AttachError> {
    let index = crate::iface::index(iface).map_err(|_| AttachError::NoSuchInterface(iface.into()))?;
    let query = |source| AttachError::Query { iface: iface.into(), source };
    if let Some(existing) = netlink::xdp_program(index).map_err(query)? {
        let name = program_name(existing.id);
        if !force {
            return Err(AttachError::Foreign {
                iface: iface.into(),
                id: existing.id,
                name,
                mode: existing.mode_name(),
            });
        }
        log::warn!(
            "--force: removing XDP program id {} ({name}, {} mode) from {iface}",
            existing.id,
            existing.mode_name()
        );
        let remove = |source| AttachError::Remove { iface: iface.into(), id: existing.id, source };
        match netlink::detach_xdp(index, existing.mode_flags) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                if !bpf::detach_xdp_link(index, existing.id).map_err(remove)? {
                    return Err(remove(err));
                }
            }
            Err(err) => return Err(remove(err)),
        }
    }
    program.attach(iface, XdpMode::Driver).map_err(|source| {
        // A driver without multi-buffer XDP refuses a program on an MTU above a page (ERANGE).
        match netlink::link_mtu(index) {
            Ok(mtu) if has_os_error(&source, libc::ERANGE) => AttachError::MtuTooLarge { iface: iface.into(), mtu },
            _ => AttachError::Attach { iface: iface.into(), source },
        }
    })?;
    // The link stays owned by `program`: dropping the `Ebpf` detaches it. aya falls back to
    // netlink silently on old kernels, so look for our bpf_link to tell which we got.
    let our_id = program.info().ok().map(|info| info.id());
    let held_by_link = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .any(|link| Some(link.program_id()) == our_id && matches!(link.link_type(), Ok(LinkType::Xdp)));
    Ok(if held_by_link { Attached::Link } else { Attached::Netlink })
}

/// Loads the object's TC program `name` and attaches it to `iface`'s egress through a tcx link
/// (the kernel detaches it when the link's descriptor closes, however the process ends),
/// first in line; `what` names it in errors.
pub fn attach_tc_egress(ebpf: &mut aya::Ebpf, name: &str, iface: &str, what: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use aya::programs::{
        links::LinkOrder,
        tc::{SchedClassifier, TcAttachOptions, TcAttachType},
    };
    let program: &mut SchedClassifier =
        ebpf.program_mut(name).with_context(|| format!("eBPF object has no {what}"))?.try_into()?;
    program.load().with_context(|| format!("loading the {what} (verifier)"))?;
    program
        .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching the {what} to {iface} (tcx needs Linux 6.6)"))?;
    Ok(())
}
