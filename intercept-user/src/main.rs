//! `intercept`: steals the test server's replies on the assistant host.
//!
//! This stage attaches the reply filter to the assistant's interface and reports what it sees;
//! the AF_XDP path and the copier protocol build on it.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use aya::{maps::HashMap, programs::Xdp};
use clap::Parser;
use common::{counters::InterceptCounter, endpoint::Endpoint, maps::TARGET_ENDPOINTS};
use xdp_runtime::{counters::Counters, Attached};

/// The eBPF object built from `intercept-ebpf` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/intercept"));

#[derive(Debug, Parser)]
#[command(name = "intercept", version, about = "Steal a test server's replies (XDP) for the copiers.")]
struct Args {
    /// The interface the test server's replies arrive on.
    #[arg(short = 'i', long)]
    iface: String,
    /// Test-server endpoints whose replies to steal: IP:PORT[,IP:PORT...]
    #[arg(long, value_delimiter = ',', required = true)]
    target: Vec<SocketAddr>,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    stats_interval: f64,
    /// Replace an XDP program this process did not attach.
    #[arg(long)]
    force: bool,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run(args))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The chain of causes, not a backtrace: users act on the message.
            eprintln!("intercept: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {

    let mut ebpf = xdp_runtime::load(EBPF_OBJECT)?;
    xdp_runtime::forward_logs(&mut ebpf)?;
    {
        let map = ebpf.map_mut(TARGET_ENDPOINTS).context("eBPF object has no target endpoint map")?;
        let mut targets: HashMap<_, Endpoint, u8> = HashMap::try_from(map)?;
        for target in &args.target {
            targets.insert(Endpoint::from(*target), 1, 0).with_context(|| format!("adding target {target}"))?;
            log::info!("intercepting replies from {target}");
        }
    }
    let counters = Counters::<InterceptCounter>::take(&mut ebpf)?;
    let program: &mut Xdp = ebpf.program_mut("intercept").context("eBPF object has no intercept program")?.try_into()?;
    program.load().context("loading the intercept XDP program (verifier)")?;
    match xdp_runtime::attach(program, &args.iface, args.force)? {
        Attached::Link => log::info!("XDP program attached to {} (bpf_link: detached when this process exits)", args.iface),
        Attached::Netlink => log::warn!(
            "XDP program attached to {} through netlink (no bpf_link support): it is detached on \
             SIGINT/SIGTERM, but not if this process is killed",
            args.iface
        ),
    }

    let stop = xdp_runtime::report_until_stopped("intercept", &counters, Duration::from_secs_f64(args.stats_interval)).await?;
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
