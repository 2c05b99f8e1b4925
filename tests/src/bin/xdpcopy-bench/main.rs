//! `xdpcopy-bench` (run by `cargo xtask bench`): what the copier and the intercept carry, and at what cost, measured on
//! the namespace test bed, every figure from one invocation so ratios compare like with like.
//! Figures are reported (JSON, Markdown and an SVG plot under `target/bench/`), never asserted.

mod capture;
mod peer;
mod replay;
mod svg;
mod wakeup;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use xdpcopy_testbed::{topology::iface, Host, Process, Testbed};

/// What to run.
#[derive(Parser)]
#[command(
    name = "xdpcopy-bench",
    about = "Measure the capture and replay paths on a namespace test bed; writes target/bench/ (root)"
)]
struct Plan {
    /// Short sessions (one request each) in the generated capture.
    #[arg(long, default_value_t = 100_000)]
    short: u32,
    /// Keep-alive sessions (ten requests each).
    #[arg(long, default_value_t = 10_000)]
    keepalive: u32,
    /// Run only the scenario of this name ("capture" is the capture path, "peer" every
    /// comparison with the peers), or those whose name contains it.
    #[arg(long)]
    only: Option<String>,
    /// Seconds each capture-path step floods for.
    #[arg(long, default_value_t = 1.0)]
    step_seconds: f64,
    /// Also run the original tcpcopy and intercept, built from the source archives in this
    /// directory (`tcpcopy-*.tar.gz`, `intercept-*.tar.gz`), beside ours ("peer": only them).
    #[arg(long, value_name = "DIR")]
    peer: Option<PathBuf>,
    /// Repetitions of each comparison with the peers (ours and theirs interleaved).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Short sessions in the comparison's captures at maximum speed.
    #[arg(long, default_value_t = 10_000)]
    peer_short: u32,
    /// Keep-alive sessions (ten requests each) in the comparison's capture.
    #[arg(long, default_value_t = 1_000)]
    peer_keepalive: u32,
}

const CAPTURE: &str = "capture";
const PEER: &str = "peer";
/// Longest a binary may take to load and attach its XDP program.
const STARTUP: Duration = Duration::from_secs(20);

/// CPU time of a live process, from /proc/PID/stat: (user + system, user), microseconds.
fn process_cpu_us(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (user, system): (u64, u64) = (fields[11].parse()?, fields[12].parse()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(((user + system) * 1_000_000 / hz, user * 1_000_000 / hz))
}

/// The kernel's NAPI threads for `iface` (threaded NAPI names them `napi/IFACE-ID`): CPU time,
/// microseconds, summed. Only one test bed runs at a time, so the name is unambiguous.
fn napi_cpu_us(iface: &str) -> anyhow::Result<u64> {
    let prefix = format!("napi/{iface}-");
    let mut total = None;
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // A kernel thread's name is cut at 15 bytes.
        if comm.trim_end().starts_with(&prefix[..prefix.len().min(15)]) {
            if let Ok((cpu, _)) = process_cpu_us(pid) {
                *total.get_or_insert(0) += cpu;
            }
        }
    }
    total.with_context(|| format!("no NAPI thread for {iface} (threaded NAPI off?)"))
}

/// The test server and both ends of the control link receive in NAPI threads of their own, as
/// on separate hosts (veth's default bills each receiver's stack to its sender).
fn receive_in_napi_threads(tb: &Testbed) -> anyhow::Result<()> {
    tb.receive_in_napi_thread(Host::Target, iface::TARGET_TO_ONLINE, Host::Online, iface::ONLINE_TO_TARGET)?;
    tb.receive_in_napi_thread(Host::Online, iface::ONLINE_TO_ASSIST, Host::Assist, iface::ASSIST_TO_ONLINE)?;
    tb.receive_in_napi_thread(Host::Assist, iface::ASSIST_TO_ONLINE, Host::Online, iface::ONLINE_TO_ASSIST)
}

/// Starts the intercept on the assistant host for `target`, attached.
fn start_intercept(tb: &Testbed, target: SocketAddr) -> anyhow::Result<Process> {
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target.to_string(), "--stats-interval", "60"]);
    let mut intercept = tb.start("intercept", cmd)?;
    intercept.wait_for_line(STARTUP, |l| l.contains("XDP program attached"))?;
    Ok(intercept)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} × {cpu}, Linux {}", kernel.trim())
}

/// Runs the plan and writes `target/bench/bench.{json,md}` (and `capture.svg`).
fn run_all(root: &Path, plan: &Plan) -> anyhow::Result<PathBuf> {
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let machine = machine();
    let scenarios = replay::scenarios(plan.short, plan.keepalive);
    let only = plan.only.as_deref();
    let exact = only.is_some_and(|o| o == CAPTURE || scenarios.iter().any(|sc| sc.name == o));
    let picked = |name: &str| only.is_none_or(|o| if exact { name == o } else { name.contains(o) });

    let mut steps = Vec::new();
    let mut extras = None;
    if picked(CAPTURE) {
        for rate in capture::RATES {
            println!("bench: capture path, {}", capture::rate_label(rate));
            let step = capture::step(rate, plan.step_seconds)?;
            println!(
                "bench:   bare XDP_PASS {:.0} → {:.0} pps; copier {:.0} offered, {:.0} processed, {} lost ({} before XDP, {} by the copier); probes {}",
                step.baseline.pps(),
                step.baseline_pps(),
                step.copier.pps(),
                step.processed_pps(),
                step.lost(),
                step.lost_before_xdp(),
                step.copier_dropped(),
                step.probes_answered
            );
            steps.push(step);
        }
        println!("bench: capture path, mirror mode and transmit paths, unpaced");
        extras = Some(capture::extras(plan.step_seconds)?);
    }

    let mut outcomes = Vec::new();
    for sc in scenarios.into_iter().filter(|sc| picked(&sc.name)) {
        println!(
            "bench: {} ({} sessions x {} requests, -n {}, {} worker(s), --tx {})",
            sc.name, sc.sessions.count, sc.sessions.requests_per_session, sc.multiply, sc.workers, sc.tx
        );
        let o = replay::run(&sc)?;
        println!("bench:   {}", o.brief());
        outcomes.push(o);
    }

    let mut compared = None;
    // `--only peer`: every comparison; another name: the comparisons whose name contains it.
    let peer_cases: Vec<peer::Case> = peer::cases(plan.peer_short, plan.peer_keepalive)
        .into_iter()
        .filter(|c| only.is_none_or(|o| o == PEER || c.name.contains(o)))
        .collect();
    if let Some(dir) = plan.peer.as_deref().filter(|_| !peer_cases.is_empty()) {
        println!("bench: building the peers from {}", dir.display());
        let peers = peer::build(dir, &out.join("peers"))?;
        let wake = wakeup::measure()?;
        println!(
            "bench: a wake-up round trip costs {:.1} µs of CPU across CPUs, {:.1} on one",
            wake.across_cpus_us, wake.same_cpu_us
        );
        let mut runs = Vec::new();
        for case in peer_cases {
            for rep in 0..plan.reps {
                // Who goes first alternates: neither tool always meets the VM's same minute.
                let order = if rep % 2 == 0 {
                    [peer::Tool::Ours, peer::Tool::Theirs]
                } else {
                    [peer::Tool::Theirs, peer::Tool::Ours]
                };
                for tool in order {
                    let r = peer::run(&case, tool, rep, &peers)?;
                    println!(
                        "bench: {} ({:?}, repetition {rep}): {:.1} % answered, copier {:.1} µs/answered request, intercept {:.1}, start-up {:.1} ms",
                        case.name,
                        tool,
                        r.success_pct(),
                        r.copier_us_per_answered(),
                        r.intercept_us_per_answered(),
                        r.startup_ms
                    );
                    if let Some(said) = &r.shortfall {
                        println!("bench:   ours left requests unanswered; it said:\n{said}");
                    }
                    runs.push(r);
                }
            }
        }
        compared = Some((runs, peers, wake));
    }

    let mut md = format!("Measured by `cargo xtask bench` on {machine}, veth test bed in network namespaces.\n\n");
    if let Some((runs, peers, wake)) = &compared {
        md += &peer::markdown(runs, peers);
        md += &wake.markdown();
        md += "\n![theirs / ours](peer.svg)\n\n";
        std::fs::write(out.join("peer.svg"), peer::plot(runs))?;
    }
    if !steps.is_empty() {
        md += &capture::markdown(&steps, extras.as_ref(), plan.step_seconds);
        md += "\n![offered vs processed](capture.svg)\n\n";
        std::fs::write(out.join("capture.svg"), capture::plot(&steps))?;
    }
    if !outcomes.is_empty() {
        md += &replay::markdown(&outcomes, extras.as_ref().map(|e| e.tx_af_xdp.cpu_us_per_frame()));
    }
    let json = serde_json::json!({
        "machine": machine,
        "capture": (!steps.is_empty()).then(|| capture::json(&steps, extras.as_ref())),
        "replay": replay::json(&outcomes),
        "peer": compared.as_ref().map(|(runs, peers, _)| peer::json(runs, peers)),
        "wake_up": compared.as_ref().map(|(_, _, wake)| wake.json()),
    });
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    std::fs::write(out.join("bench.md"), &md)?;
    println!("\n{md}");
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let plan = Plan::parse();
    xdpcopy_testbed::require_root();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the test bed lives in the workspace");
    match run_all(root, &plan) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
