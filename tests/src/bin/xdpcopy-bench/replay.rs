//! Replay path: generated captures of short and keep-alive HTTP sessions are replayed at
//! maximum speed into the test server's nginx; success is what nginx logged. Amplification
//! (`-n 10`, `-n 100` with `-c` ranges) and scaling (`--workers 1` vs `2`, AF_XDP vs raw-socket
//! transmit) run in the same invocation, so their ratios compare like with like.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use xdpcopy_testbed::{
    bins,
    pcapgen::{self, Sessions},
    servers::Nginx,
    stats,
    topology::addr,
    Host, Testbed,
};

use crate::{process_cpu_us, start_intercept};

/// Longest a replay may take before the bench gives up on it.
const REPLAY_LIMIT: Duration = Duration::from_secs(900);
/// "Maximum speed": the capture's timing divided by this.
const MAX_SPEED: &str = "1000000";
/// The "short" scenario with every receiver left inline in its sender's transmit call.
const INLINE: &str = "short, veth receive inline";
/// The test server's SYN cookies sent: its SYN queue overflowed.
const SYN_COOKIES: &str = "TcpExtSyncookiesSent";

/// One replay run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub sessions: Sessions,
    pub multiply: u16,
    pub workers: u16,
    pub tx: &'static str,
    /// The test server and both ends of the control link receive in NAPI threads of their
    /// own (see `Testbed::receive_in_napi_thread`), so that each process's CPU figure is its
    /// own work; otherwise veth bills every receiver's stack to the sender.
    pub napi_threads: bool,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    scenario: Scenario,
    /// Sessions replayed (copies included).
    sessions: u64,
    requests_expected: u64,
    requests_received: u64,
    seconds: f64,
    target_pps: u64,
    /// The whole copier process, start-up included: user + system, and user alone.
    copier_cpu_us: u64,
    copier_user_us: u64,
    /// The copier's worker threads (session engine and transmit).
    worker_cpu_us: u64,
    /// Packets the copier sent to the test server.
    sent: u64,
    /// What the workers took in for them: captured packets (both directions) and reply facts.
    captured: u64,
    facts: u64,
    /// The intercept while the copier ran: user + system, and user alone.
    intercept_cpu_us: u64,
    intercept_user_us: u64,
    /// SYN cookies the test server sent: its SYN queue overflowed (sessions then recover by
    /// retransmission, as real clients' would).
    target_syn_cookies: u64,
    copier_peak_rss_kib: u64,
    retransmitted: u64,
    gave_up: u64,
    /// The copier's whole summary line, for diagnosis.
    summary: String,
}

impl Outcome {
    /// One line for the progress log.
    pub fn brief(&self) -> String {
        format!(
            "{:.2} % success, {:.0} sessions/s, copier {:.1} µs/session ({:.1} user), intercept {:.1} µs/session ({:.1} user)",
            self.success_pct(),
            self.sessions_per_s(),
            self.copier_us_per_session(),
            self.copier_user_us_per_session(),
            self.intercept_us_per_session(),
            self.intercept_user_us_per_session()
        )
    }

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
    fn copier_user_us_per_session(&self) -> f64 {
        self.copier_user_us as f64 / self.sessions.max(1) as f64
    }
    fn intercept_user_us_per_session(&self) -> f64 {
        self.intercept_user_us as f64 / self.sessions.max(1) as f64
    }
    /// Rewrite and forward: packets sent per second of worker CPU (one pinned core each).
    pub fn pps_per_worker_core(&self) -> f64 {
        self.sent as f64 / (self.worker_cpu_us.max(1) as f64 / 1e6)
    }
    /// Everything a worker handles, per second of its CPU: captured packets, reply facts and
    /// packets sent (a forwarder's figure counts a frame in and a frame out).
    fn frames_handled_per_worker_core(&self) -> f64 {
        (self.captured + self.facts + self.sent) as f64 / (self.worker_cpu_us.max(1) as f64 / 1e6)
    }
    fn frames_per_session(&self) -> f64 {
        self.sent as f64 / self.sessions.max(1) as f64
    }
}

pub fn run(sc: &Scenario) -> anyhow::Result<Outcome> {
    let tb = Testbed::new()?;
    let target = SocketAddr::new(addr::TARGET.into(), 8080);
    if sc.napi_threads {
        crate::receive_in_napi_threads(&tb)?;
    }
    let nginx = Nginx::start(&tb, Host::Target, "target-nginx", target)?;
    let intercept = start_intercept(&tb, target)?;
    // Its start-up (loading and verifying the XDP program) is not a cost of the sessions.
    let intercept_idle = process_cpu_us(intercept.pid())?;
    let cookies_before = tb.target.nstat(SYN_COOKIES)?;
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
    let intercept_cpu = process_cpu_us(intercept.pid())?;
    let target_syn_cookies = tb.target.nstat(SYN_COOKIES)? - cookies_before;
    for warning in copier.stderr().lines().filter(|l| l.contains("WARN")) {
        println!("bench:   copier: {warning}");
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
        copier_user_us: s.get("cpu_user_us"),
        worker_cpu_us: s.get("worker_cpu_us"),
        sent: s.get("sent"),
        captured: s.get("captured"),
        facts: s.get("facts"),
        intercept_cpu_us: intercept_cpu.0.saturating_sub(intercept_idle.0),
        intercept_user_us: intercept_cpu.1.saturating_sub(intercept_idle.1),
        target_syn_cookies,
        copier_peak_rss_kib: s.get("peak_rss_kib"),
        retransmitted: s.get("retransmitted"),
        gave_up: s.get("gave_up"),
        summary: copier
            .stdout()
            .lines()
            .rev()
            .find(|l| l.starts_with("copier summary:"))
            .unwrap_or_default()
            .to_owned(),
    })
}

pub fn scenarios(short: u32, keepalive: u32) -> Vec<Scenario> {
    let sessions = |count, requests_per_session| Sessions { count, requests_per_session, gap_us: 10 };
    let sc = |name: &str, sessions, multiply, workers, tx| Scenario {
        name: name.into(),
        sessions,
        multiply,
        workers,
        tx,
        napi_threads: true,
    };
    vec![
        sc("short", sessions(short, 1), 1, 1, "xdp"),
        Scenario { napi_threads: false, ..sc(INLINE, sessions(short, 1), 1, 1, "xdp") },
        sc("keep-alive x10", sessions(keepalive, 10), 1, 1, "xdp"),
        sc("short, -n 10", sessions((short / 10).max(1), 1), 10, 1, "xdp"),
        sc("short, -n 100", sessions((short / 100).max(1), 1), 100, 1, "xdp"),
        sc("short, 2 workers", sessions(short, 1), 1, 2, "xdp"),
        sc("short, --tx raw", sessions(short, 1), 1, 1, "raw"),
    ]
}

/// `af_xdp_tx_us_per_frame`: the AF_XDP generator's CPU per frame on this link, when the
/// capture path ran in the same run: a lower bound on what the kernel's transmit costs the
/// copier (its frames are larger and go fewer to a kick).
pub fn markdown(outcomes: &[Outcome], af_xdp_tx_us_per_frame: Option<f64>) -> String {
    let mut md = String::from(
        "### Replay path (maximum replay speed; the test server and the control link receive in NAPI threads of their own, \
         except where it says inline)\n\n",
    );
    md += "| scenario | sessions | requests received / sent | success | sessions/s | requests/s | target pps | copier CPU µs/session (user) | intercept CPU µs/session (user) | rewrite+forward pps per worker core | frames handled per worker core (captured + replies + sent) | copier peak RSS | test server SYN cookies |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for o in outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {:.2} % | {:.0} | {:.0} | {} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.0} | {:.0} | {:.0} MiB | {} |",
            o.scenario.name,
            o.sessions,
            o.requests_received,
            o.requests_expected,
            o.success_pct(),
            o.sessions_per_s(),
            o.requests_per_s(),
            o.target_pps,
            o.copier_us_per_session(),
            o.copier_user_us_per_session(),
            o.intercept_us_per_session(),
            o.intercept_user_us_per_session(),
            o.pps_per_worker_core(),
            o.frames_handled_per_worker_core(),
            o.copier_peak_rss_kib as f64 / 1024.0,
            o.target_syn_cookies,
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
    if let Some(short) = find("short") {
        let per_sent = |n: u64| n as f64 / short.sent.max(1) as f64;
        let _ = writeln!(
            md,
            "\nRewrite and forward counts the frames sent; for each, a short session's worker also took {:.2} captured \
             packets (both directions) and {:.2} reply facts.",
            per_sent(short.captured),
            per_sent(short.facts),
        );
    }
    if let (Some(short), Some(per_frame)) = (find("short"), af_xdp_tx_us_per_frame) {
        let floor = short.frames_per_session() * per_frame;
        let _ = writeln!(
            md,
            "\nThe kernel's part of transmit: a short session is {:.2} frames to the test server; at the AF_XDP generator's \
             {per_frame:.2} µs of CPU per (smaller, 64-per-kick) frame on this link, measured above, that is at least {floor:.1} \
             of the copier's {:.1} µs per session.",
            short.frames_per_session(),
            short.copier_us_per_session(),
        );
    }
    if let (Some(napi), Some(inline)) = (find("short"), find(INLINE)) {
        let _ = writeln!(
            md,
            "\nWith every receiver inline in its sender's transmit call (veth's default), the copier is billed the test \
             server's receive path and the intercept the copier's: copier {:.1} µs/session there against {:.1}, intercept \
             {:.1} against {:.1}.",
            inline.copier_us_per_session(),
            napi.copier_us_per_session(),
            inline.intercept_us_per_session(),
            napi.intercept_us_per_session(),
        );
    }
    md
}

pub fn json(outcomes: &[Outcome]) -> serde_json::Value {
    outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "scenario": o.scenario.name,
                "sessions": o.sessions,
                "requests_per_session": o.scenario.sessions.requests_per_session,
                "multiply": o.scenario.multiply,
                "workers": o.scenario.workers,
                "tx": o.scenario.tx,
                "napi_threads": o.scenario.napi_threads,
                "requests_expected": o.requests_expected,
                "requests_received": o.requests_received,
                "success_pct": o.success_pct(),
                "seconds": o.seconds,
                "sessions_per_s": o.sessions_per_s(),
                "requests_per_s": o.requests_per_s(),
                "target_pps": o.target_pps,
                "copier_cpu_us": o.copier_cpu_us,
                "copier_user_us": o.copier_user_us,
                "intercept_cpu_us": o.intercept_cpu_us,
                "intercept_user_us": o.intercept_user_us,
                "copier_us_per_session": o.copier_us_per_session(),
                "intercept_us_per_session": o.intercept_us_per_session(),
                "worker_cpu_us": o.worker_cpu_us,
                "sent": o.sent,
                "pps_per_worker_core": o.pps_per_worker_core(),
                "captured": o.captured,
                "facts": o.facts,
                "frames_handled_per_worker_core": o.frames_handled_per_worker_core(),
                "target_syn_cookies": o.target_syn_cookies,
                "copier_peak_rss_kib": o.copier_peak_rss_kib,
                "retransmitted": o.retransmitted,
                "gave_up": o.gave_up,
                "copier_summary": o.summary,
            })
        })
        .collect()
}
