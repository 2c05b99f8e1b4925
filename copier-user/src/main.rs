//! `copier`: copies online TCP traffic to a test server.
//!
//! This stage attaches the capture program to the online interface and reports what it sees;
//! the session engine and the transmit path build on it.

use std::time::Duration;

use anyhow::Context as _;
use aya::{maps::HashMap, programs::Xdp};
use clap::Parser;
use common::{counters::CopierCounter, endpoint::Endpoint, maps::ONLINE_ENDPOINTS};
use copier_user::mapping::Mappings;
use xdp_runtime::{counters::Counters, Attached};

/// The eBPF object built from `copier-ebpf` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/copier"));

#[derive(Debug, Parser)]
#[command(name = "copier", version, about = "Copy live TCP traffic to a test server (XDP capture).")]
struct Args {
    /// Online-to-target mappings: [ONLINE_IP:]ONLINE_PORT-TARGET_IP:TARGET_PORT[,...]
    #[arg(short = 'x', long = "map")]
    mappings: Mappings,
    /// The online interface to capture on.
    #[arg(long)]
    iface: String,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 5.0, value_parser = xdp_runtime::positive_seconds)]
    stats_interval: f64,
    /// Replace an XDP program this process did not attach.
    #[arg(long)]
    force: bool,
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run(args))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The chain of causes, not a backtrace: users act on the message.
            eprintln!("copier: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mappings = &args.mappings.0;

    let mut ebpf = xdp_runtime::load(EBPF_OBJECT)?;
    xdp_runtime::forward_logs(&mut ebpf)?;
    {
        let map = ebpf.map_mut(ONLINE_ENDPOINTS).context("eBPF object has no online endpoint map")?;
        let mut online: HashMap<_, Endpoint, u8> = HashMap::try_from(map)?;
        for m in mappings {
            online.insert(m.online.key(), 1, 0).with_context(|| format!("adding online endpoint {}", m.online))?;
            log::info!("copying {} to {}", m.online, m.target);
        }
    }
    let counters = Counters::<CopierCounter>::take(&mut ebpf)?;
    let program: &mut Xdp = ebpf.program_mut("copier").context("eBPF object has no copier program")?.try_into()?;
    program.load().context("loading the copier XDP program (verifier)")?;
    match xdp_runtime::attach(program, &args.iface, args.force)? {
        Attached::Link => log::info!("XDP program attached to {} (bpf_link: detached when this process exits)", args.iface),
        Attached::Netlink => log::warn!(
            "XDP program attached to {} through netlink (no bpf_link support): it is detached on \
             SIGINT/SIGTERM, but not if this process is killed",
            args.iface
        ),
    }

    let stop = xdp_runtime::report_until_stopped("copier", &counters, Duration::from_secs_f64(args.stats_interval), Vec::new).await?;
    drop(ebpf);
    log::info!("stopped by {stop:?}; XDP program detached from {}", args.iface);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        super::Args::command().debug_assert();
    }
}
