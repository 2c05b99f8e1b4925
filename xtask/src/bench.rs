//! `cargo xtask bench`: what the copier and the intercept carry, and at what cost, measured on
//! the namespace test bed. Figures are reported (JSON and Markdown under `target/bench/`),
//! never asserted.
//!
//! Replay path: generated captures of short and keep-alive HTTP sessions are replayed at
//! maximum speed into the test server's nginx; success is what nginx logged. Amplification
//! (`-n 10`, `-n 100` with `-c` ranges) and scaling (`--workers 1` vs `2`, AF_XDP vs raw-socket
//! transmit) run in the same invocation, so their ratios compare like with like.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use xdpcopy_testbed::{
    bins,
    pcapgen::{self, Sessions},
    servers::Nginx,
    stats,
    topology::{addr, iface},
    Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);
/// Longest a replay may take before the bench gives up on it.
const REPLAY_LIMIT: Duration = Duration::from_secs(900);
/// "Maximum speed": the capture's timing divided by this.
const MAX_SPEED: &str = "1000000";

/// One replay run.
#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    sessions: Sessions,
    multiply: u16,
    workers: u16,
    tx: &'static str,
}

/// What one run measured.
#[derive(Clone, Debug)]
struct Outcome {
    scenario: Scenario,
    /// Sessions replayed (copies included).
    sessions: u64,
    requests_expected: u64,
    requests_received: u64,
    seconds: f64,
    target_pps: u64,
    /// The whole copier process, start-up included.
    copier_cpu_us: u64,
    /// The intercept while the copier ran.
    intercept_cpu_us: u64,
    copier_peak_rss_kib: u64,
    retransmitted: u64,
    gave_up: u64,
    /// The copier's whole summary line, for diagnosis.
    summary: String,
}

impl Outcome {
    fn success_pct(&self) -> f64 {
        100.0 * self.requests_received as f64 / self.requests_expected.max(1) as f64
    }
    fn sessions_per_s(&self) -> f64 {
        self.sessions as f64 / self.seconds
    }
    fn requests_per_s(&self) -> f64 {
        self.requests_received as f64 / self.seconds
    }
    fn copier_us_per_session(&self) -> f64 {
        self.copier_cpu_us as f64 / self.sessions.max(1) as f64
    }
    fn intercept_us_per_session(&self) -> f64 {
        self.intercept_cpu_us as f64 / self.sessions.max(1) as f64
    }
}

/// User + system CPU time of a live process, from /proc/PID/stat.
fn process_cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000 / hz)
}

fn start_intercept(tb: &Testbed, target: SocketAddr) -> anyhow::Result<Process> {
    let mut cmd = tb.command(Host::Assist, bins::xdpcopy("intercept"));
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target.to_string(), "--stats-interval", "60"]);
    let mut p = tb.start("intercept", cmd)?;
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached"))?;
    Ok(p)
}

fn run(sc: &Scenario) -> anyhow::Result<Outcome> {
    let tb = Testbed::new()?;
    let target = SocketAddr::new(addr::TARGET.into(), 8080);
    let nginx = Nginx::start(&tb, Host::Target, "target-nginx", target)?;
    let intercept = start_intercept(&tb, target)?;
    // Its start-up (loading and verifying the XDP program) is not a cost of the sessions.
    let intercept_idle_cpu_us = process_cpu_us(intercept.pid())?;
    let pcap = tb.dir().join("sessions.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sc.sessions)?;

    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{target}"), "-s", &addr::ASSIST_CONTROL.to_string(), "-i", &pcap.to_string_lossy()])
        .args(["-a", MAX_SPEED, "--stats-interval", "10", "--workers", &sc.workers.to_string(), "--tx", sc.tx]);
    if sc.multiply > 1 {
        // Copies appear from 10.100.1.100-10.100.1.250: in the client network, apart from the
        // generated clients' own addresses.
        cmd.args(["-n", &sc.multiply.to_string(), "-c", "10.100.1.100-10.100.1.250"]);
    }
    let mut copier = tb.start("copier", cmd)?;
    let status = copier.wait_timeout(REPLAY_LIMIT)?;
    if !status.success() {
        bail!("{}: the copier failed ({status})\n{}", sc.name, copier.describe());
    }
    let intercept_cpu_us = process_cpu_us(intercept.pid())?.saturating_sub(intercept_idle_cpu_us);
    for warning in copier.stderr().lines().filter(|l| l.contains("WARN")) {
        println!("xtask bench:   copier: {warning}");
    }
    let s = stats::last(&copier.stdout()).with_context(|| format!("{}: no summary\n{}", sc.name, copier.describe()))?;
    let received = nginx.entries().into_iter().filter(|(r, _)| r.starts_with("GET /bench/")).count() as u64;
    Ok(Outcome {
        scenario: sc.clone(),
        sessions: s.get("sessions"),
        requests_expected: sc.sessions.requests() * sc.multiply as u64,
        requests_received: received,
        seconds: s.get("elapsed_ms") as f64 / 1e3,
        target_pps: s.get("pps"),
        copier_cpu_us: s.get("cpu_us"),
        intercept_cpu_us,
        copier_peak_rss_kib: s.get("peak_rss_kib"),
        retransmitted: s.get("retransmitted"),
        gave_up: s.get("gave_up"),
        summary: copier.stdout().lines().rev().find(|l| l.starts_with("copier summary:")).unwrap_or_default().to_owned(),
    })
}

fn scenarios(short: u32, keepalive: u32) -> Vec<Scenario> {
    let sessions = |count, requests_per_session| Sessions { count, requests_per_session, gap_us: 10 };
    let sc = |name: &str, sessions, multiply, workers, tx| Scenario { name: name.into(), sessions, multiply, workers, tx };
    vec![
        sc("short", sessions(short, 1), 1, 1, "xdp"),
        sc("keep-alive x10", sessions(keepalive, 10), 1, 1, "xdp"),
        sc("short, -n 10", sessions((short / 10).max(1), 1), 10, 1, "xdp"),
        sc("short, -n 100", sessions((short / 100).max(1), 1), 100, 1, "xdp"),
        sc("short, 2 workers", sessions(short, 1), 1, 2, "xdp"),
        sc("short, --tx raw", sessions(short, 1), 1, 1, "raw"),
    ]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{} × {cpu}, Linux {}", xdp_cores(), kernel.trim())
}

fn xdp_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn markdown(outcomes: &[Outcome], machine: &str) -> String {
    let mut md = format!("Replay path, `cargo xtask bench` on {machine}; maximum replay speed, veth test bed.\n\n");
    md += "| scenario | sessions | requests received / sent | success | sessions/s | requests/s | target pps | copier CPU µs/session | intercept CPU µs/session | copier peak RSS |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for o in outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {:.2} % | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.0} MiB |",
            o.scenario.name,
            o.sessions,
            o.requests_received,
            o.requests_expected,
            o.success_pct(),
            o.sessions_per_s(),
            o.requests_per_s(),
            o.target_pps,
            o.copier_us_per_session(),
            o.intercept_us_per_session(),
            o.copier_peak_rss_kib as f64 / 1024.0
        );
    }
    let find = |name: &str| outcomes.iter().find(|o| o.scenario.name == name);
    if let (Some(one), Some(two), Some(raw)) = (find("short"), find("short, 2 workers"), find("short, --tx raw")) {
        let _ = writeln!(
            md,
            "\nRatios in this run: 2 workers / 1 worker sessions/s = {:.2}; AF_XDP / raw-socket transmit sessions/s = {:.2}, \
             copier CPU per session raw / AF_XDP = {:.2}.",
            two.sessions_per_s() / one.sessions_per_s(),
            one.sessions_per_s() / raw.sessions_per_s(),
            raw.copier_us_per_session() / one.copier_us_per_session(),
        );
    }
    md
}

fn json(outcomes: &[Outcome], machine: &str) -> String {
    let mut runs = Vec::new();
    for o in outcomes {
        runs.push(format!(
            "{{\"scenario\":\"{}\",\"sessions\":{},\"requests_per_session\":{},\"multiply\":{},\"workers\":{},\"tx\":\"{}\",\
             \"requests_expected\":{},\"requests_received\":{},\"success_pct\":{:.3},\"seconds\":{:.3},\"sessions_per_s\":{:.1},\
             \"requests_per_s\":{:.1},\"target_pps\":{},\"copier_cpu_us\":{},\"intercept_cpu_us\":{},\
             \"copier_us_per_session\":{:.2},\"intercept_us_per_session\":{:.2},\"copier_peak_rss_kib\":{},\"retransmitted\":{},\"gave_up\":{},\"copier_summary\":\"{}\"}}",
            o.scenario.name,
            o.sessions,
            o.scenario.sessions.requests_per_session,
            o.scenario.multiply,
            o.scenario.workers,
            o.scenario.tx,
            o.requests_expected,
            o.requests_received,
            o.success_pct(),
            o.seconds,
            o.sessions_per_s(),
            o.requests_per_s(),
            o.target_pps,
            o.copier_cpu_us,
            o.intercept_cpu_us,
            o.copier_us_per_session(),
            o.intercept_us_per_session(),
            o.copier_peak_rss_kib,
            o.retransmitted,
            o.gave_up,
            o.summary.replace(['"', '\\'], "")
        ));
    }
    format!("{{\"machine\":\"{machine}\",\"replay\":[\n{}\n]}}\n", runs.join(",\n"))
}

/// Runs every scenario and writes `target/bench/bench.{json,md}`.
pub fn run_all(root: &Path, short: u32, keepalive: u32, only: Option<&str>) -> anyhow::Result<PathBuf> {
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let machine = machine();
    let mut outcomes = Vec::new();
    for sc in scenarios(short, keepalive).into_iter().filter(|sc| only.is_none_or(|o| sc.name.contains(o))) {
        println!("xtask bench: {} ({} sessions x {} requests, -n {}, {} worker(s), --tx {})", sc.name, sc.sessions.count, sc.sessions.requests_per_session, sc.multiply, sc.workers, sc.tx);
        let o = run(&sc)?;
        println!(
            "xtask bench:   {:.2} % success, {:.0} sessions/s, copier {:.1} µs/session, intercept {:.1} µs/session",
            o.success_pct(),
            o.sessions_per_s(),
            o.copier_us_per_session(),
            o.intercept_us_per_session()
        );
        outcomes.push(o);
    }
    std::fs::write(out.join("bench.json"), json(&outcomes, &machine))?;
    let md = markdown(&outcomes, &machine);
    std::fs::write(out.join("bench.md"), &md)?;
    println!("\n{md}");
    Ok(out)
}
