//! `--peer DIR`: the original tcpcopy and intercept, built from the source archives in DIR, run
//! beside ours on the same generated captures, test bed and settings, interleaved run by run,
//! so that every ratio compares two tools measured in the same minutes of this VM.
//!
//! Both tools are measured alike, from outside: success is what the test server's nginx logged
//! as answered (200); start-up is exec to the first segment the test server receives (its
//! `Tcp: InSegs`); CPU is the process's (/proc), taken when the test server has every request
//! or has had none for [`IDLE`], so tcpcopy's 120 s idle tail after the file is never billed;
//! per answered request (a short session is one, a keep-alive session ten) it excludes
//! start-up. The intercepts' CPU is counted from after their start-up to the same moment.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use xdpcopy_testbed::{
    bins,
    pcapgen::{self, Sessions},
    servers::{self, Nginx},
    topology::{addr, iface},
    Host, Process, Testbed,
};

use crate::{process_cpu_us, start_intercept, svg};

/// No new request on the test server for this long: the tool has delivered what it will.
const IDLE: Duration = Duration::from_secs(5);
/// Longest one run may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// How often the test server's log and counters are read.
const POLL: Duration = Duration::from_millis(2);
/// Ours and theirs listen on the same control port.
const CONTROL_PORT: u16 = 36524;

/// The peers' binaries, built.
pub struct Peers {
    tcpcopy: PathBuf,
    intercept: PathBuf,
    /// What they were built from, for the report.
    pub sources: Vec<String>,
}

/// The one archive in `dir` whose name starts with `stem-`.
fn archive(dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(&format!("{stem}-")) && name.ends_with(".tar.gz") {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no {stem}-*.tar.gz in {}", dir.display()),
        _ => bail!("more than one {stem}-*.tar.gz in {}: {found:?}", dir.display()),
    }
}

fn run_in(dir: &Path, program: &str, args: &[&str], log: &Path) -> anyhow::Result<()> {
    let out = std::fs::File::create(log)?;
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("running {program} in {}", dir.display()))?;
    if !status.success() {
        bail!("`{program} {}` in {} failed ({status}); its output: {}", args.join(" "), dir.display(), log.display());
    }
    Ok(())
}

/// Unpacks `archive` into `work` and builds it (`./configure ARGS && make`), unless a binary
/// from the same archive is already there; returns `objs/NAME`.
fn build_one(archive: &Path, work: &Path, name: &str, configure: &[&str]) -> anyhow::Result<PathBuf> {
    let stamp = archive.file_name().context("an archive has a name")?.to_string_lossy().into_owned();
    let tree = work.join(&stamp).with_extension("").with_extension("");
    let binary = tree.join(name).join("objs").join(name);
    if binary.exists() {
        return Ok(binary);
    }
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    let log = work.join(format!("{name}-build.log"));
    run_in(&tree, "tar", &["xzf", &archive.to_string_lossy()], &log)?;
    let src = tree.join(name);
    run_in(&src, "./configure", configure, &log)?;
    run_in(&src, "make", &["-j2"], &log)?;
    anyhow::ensure!(binary.exists(), "{name} built, but {} is missing; see {}", binary.display(), log.display());
    Ok(binary)
}

/// Builds tcpcopy for offline replay (`--offline`) and intercept from `dir`'s archives, into
/// `work` (nothing is fetched: both need only gcc, make and libpcap).
pub fn build(dir: &Path, work: &Path) -> anyhow::Result<Peers> {
    std::fs::create_dir_all(work)?;
    let tcpcopy_src = archive(dir, "tcpcopy")?;
    let intercept_src = archive(dir, "intercept")?;
    let tcpcopy = build_one(&tcpcopy_src, work, "tcpcopy", &["--offline"])?;
    let intercept = build_one(&intercept_src, work, "intercept", &[])?;
    let sources = [tcpcopy_src, intercept_src]
        .iter()
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    Ok(Peers { tcpcopy, intercept, sources })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Ours,
    Theirs,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Theirs => "tcpcopy",
        }
    }
}

/// One comparison: a capture, how fast it is replayed, and the topology.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    sessions: Sessions,
    multiply: u16,
    /// `-a`: the capture's timing divided by this (1: as recorded).
    speed: u32,
    /// Receivers in NAPI threads of their own (see `Testbed::receive_in_napi_thread`), or inline
    /// in their sender's transmit call (veth's default, how the original was measured).
    napi_threads: bool,
}

/// The comparisons: short sessions at recorded pace and at maximum speed, keep-alive sessions,
/// and `-n 10`, each with receivers in NAPI threads and inline.
pub fn cases(short: u32, keepalive: u32) -> Vec<Case> {
    let max = 1_000_000;
    let base = [
        ("short, recorded pace", Sessions { count: (short / 5).max(1), requests_per_session: 1, gap_us: 1_000 }, 1, 1),
        ("short, maximum speed", Sessions { count: short, requests_per_session: 1, gap_us: 10 }, 1, max),
        ("keep-alive x10", Sessions { count: keepalive, requests_per_session: 10, gap_us: 10 }, 1, max),
        ("short, -n 10", Sessions { count: (short / 10).max(1), requests_per_session: 1, gap_us: 10 }, 10, max),
    ];
    let mut out = Vec::new();
    for napi_threads in [true, false] {
        for (name, sessions, multiply, speed) in base {
            let topology = if napi_threads { "NAPI threads" } else { "inline" };
            out.push(Case { name: format!("{name}, {topology}"), sessions, multiply, speed, napi_threads });
        }
    }
    out
}

/// What one run of one tool measured.
#[derive(Clone, Debug)]
pub struct Run {
    pub case: String,
    pub tool: Tool,
    pub rep: u32,
    pub expected: u64,
    /// Requests the test server answered (200).
    pub answered: u64,
    /// Exec to the first segment at the test server, and the copier's CPU by then.
    pub startup_ms: f64,
    pub startup_cpu_us: u64,
    /// The copier's CPU after start-up, until the test server had everything.
    pub copier_cpu_us: u64,
    pub intercept_cpu_us: u64,
    pub copier_peak_rss_kib: u64,
    pub intercept_peak_rss_kib: u64,
    /// Context switches of every thread over the same spans as the CPU figures: the wake-ups
    /// that dominate both tools' cost at recorded pace.
    pub copier_switches: u64,
    pub intercept_switches: u64,
    /// Exec to the test server having everything (or its last request).
    pub seconds: f64,
    /// When ours left requests unanswered: what it said of them (its summary and target
    /// lines, the intercept's last stats line), so that a rare shortfall can be read.
    pub shortfall: Option<String>,
}

impl Run {
    pub fn success_pct(&self) -> f64 {
        100.0 * self.answered as f64 / self.expected.max(1) as f64
    }
    pub fn copier_us_per_answered(&self) -> f64 {
        self.copier_cpu_us as f64 / self.answered.max(1) as f64
    }
    pub fn intercept_us_per_answered(&self) -> f64 {
        self.intercept_cpu_us as f64 / self.answered.max(1) as f64
    }
    pub fn copier_switches_per_answered(&self) -> f64 {
        self.copier_switches as f64 / self.answered.max(1) as f64
    }
    pub fn intercept_switches_per_answered(&self) -> f64 {
        self.intercept_switches as f64 / self.answered.max(1) as f64
    }
}

/// Context switches, voluntary and not, of every thread of `pid` alive now.
fn threads_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// CPU of every thread of `pid` alive now, microseconds (nanosecond-precise, unlike /proc's
/// clock ticks: start-up lasts milliseconds).
fn threads_cpu_us(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum::<u64>()
        / 1_000
}

/// CPU of `pid` so far, microseconds: /proc's clock ticks count threads that have ended, the
/// threads' own counters are precise; the larger is the better estimate.
fn cpu_us(pid: u32) -> u64 {
    process_cpu_us(pid).map_or(0, |c| c.0).max(threads_cpu_us(pid))
}

/// `VmHWM` of `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// TCP segments the test server's namespace has received (`Tcp: InSegs`).
fn target_in_segments(tb: &Testbed) -> anyhow::Result<u64> {
    let snmp = tb.target.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().context("no Tcp: header")?, tcp.next().context("no Tcp: values")?);
    let at = names.split_whitespace().position(|n| n == "InSegs").context("no InSegs")?;
    Ok(values.split_whitespace().nth(at).context("short Tcp: line")?.parse()?)
}

fn answered(nginx: &Nginx) -> u64 {
    nginx.log().iter().filter(|e| e.status == 200 && e.request.starts_with("GET /bench/")).count() as u64
}

/// The intercept of `tool` on the assistant host, started and ready; its CPU so far.
fn start_intercept_of(tb: &Testbed, tool: Tool, peers: &Peers, target: SocketAddr) -> anyhow::Result<Process> {
    match tool {
        Tool::Ours => start_intercept(tb, target),
        Tool::Theirs => {
            let log = tb.dir().join("peer-intercept.log");
            let filter = format!("tcp and src host {} and src port {}", target.ip(), target.port());
            let mut cmd = tb.command(Host::Assist, &peers.intercept);
            cmd.args(["-i", iface::ASSIST_TO_TARGET, "-F", &filter, "-l", &log.to_string_lossy()]);
            let mut p = tb.start("peer-intercept", cmd)?;
            servers::wait_listening(
                tb,
                Host::Assist,
                SocketAddr::new(addr::ASSIST_CONTROL.into(), CONTROL_PORT),
                &mut p,
            )?;
            Ok(p)
        }
    }
}

fn copier_command(tb: &Testbed, tool: Tool, peers: &Peers, case: &Case, pcap: &Path, target: SocketAddr) -> Command {
    let map = format!("80-{target}");
    let control = addr::ASSIST_CONTROL.to_string();
    let speed = case.speed.to_string();
    let multiply = case.multiply.to_string();
    let pcap = pcap.to_string_lossy();
    match tool {
        Tool::Ours => {
            let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
            cmd.args(["-x", &map, "-s", &control, "-i", &pcap, "-a", &speed, "--stats-interval", "60"]);
            if case.multiply > 1 {
                cmd.args(["-n", &multiply, "-c", "10.100.1.100-10.100.1.250"]);
            }
            cmd
        }
        Tool::Theirs => {
            let mut cmd = tb.command(Host::Online, &peers.tcpcopy);
            let log = tb.dir().join("tcpcopy.log");
            cmd.args(["-x", &map, "-s", &control, "-i", &pcap, "-a", &speed, "-l", &log.to_string_lossy()]);
            if case.multiply > 1 {
                cmd.args(["-n", &multiply, "-c", "10.100.1.x"]);
            }
            cmd
        }
    }
}

/// Runs `case` once with `tool` on a fresh test bed.
pub fn run(case: &Case, tool: Tool, rep: u32, peers: &Peers) -> anyhow::Result<Run> {
    let tb = Testbed::new()?;
    let target = SocketAddr::new(addr::TARGET.into(), 8080);
    if case.napi_threads {
        crate::receive_in_napi_threads(&tb)?;
    }
    let nginx = Nginx::start(&tb, Host::Target, "target-nginx", target)?;
    let intercept = start_intercept_of(&tb, tool, peers, target)?;
    let pcap = tb.dir().join("sessions.pcap");
    pcapgen::write_http_sessions_ethernet(&pcap, (addr::ONLINE, 80), case.sessions)?;
    let expected = case.sessions.requests() * u64::from(case.multiply);
    let intercept_idle = cpu_us(intercept.pid());
    let intercept_switches_idle = threads_switches(intercept.pid());
    let segments_before = target_in_segments(&tb)?;

    let exec = Instant::now();
    let mut copier = tb.start(tool.name(), copier_command(&tb, tool, peers, case, &pcap, target))?;
    let pid = copier.pid();
    let (startup, startup_cpu_us, startup_switches) = loop {
        if target_in_segments(&tb)? > segments_before {
            break (exec.elapsed(), threads_cpu_us(pid), threads_switches(pid));
        }
        if copier.try_status()?.is_some() || exec.elapsed() > RUN_LIMIT {
            let log = std::fs::read_to_string(tb.dir().join("tcpcopy.log")).unwrap_or_default();
            let intercept_log = std::fs::read_to_string(tb.dir().join("peer-intercept.log")).unwrap_or_default();
            bail!(
                "{} {}: nothing reached the test server\n{}\n{log}\n{intercept_log}",
                tool.name(),
                case.name,
                copier.describe()
            );
        }
        std::thread::sleep(POLL);
    };

    // Until the test server has everything, or nothing more comes; the last reading of the
    // copier's figures before it exits or is stopped.
    let (mut last, mut last_change) = (0, Instant::now());
    let mut copier_cpu = cpu_us(pid);
    let mut copier_switches = threads_switches(pid);
    let mut copier_rss = peak_rss_kib(pid);
    let mut done_at = exec.elapsed();
    loop {
        let now = answered(&nginx);
        if now != last {
            (last, last_change, done_at) = (now, Instant::now(), exec.elapsed());
        }
        let exited = copier.try_status()?.is_some();
        if !exited {
            copier_cpu = copier_cpu.max(cpu_us(pid));
            copier_switches = copier_switches.max(threads_switches(pid));
            copier_rss = copier_rss.max(peak_rss_kib(pid));
        }
        if now >= expected || exited || last_change.elapsed() > IDLE || exec.elapsed() > RUN_LIMIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let intercept_cpu = cpu_us(intercept.pid()).saturating_sub(intercept_idle);
    let intercept_switches = threads_switches(intercept.pid()).saturating_sub(intercept_switches_idle);
    let intercept_rss = peak_rss_kib(intercept.pid());
    // Ours ends by itself once every session has; tcpcopy would idle 120 s first.
    if tool == Tool::Theirs || copier.wait_timeout(Duration::from_secs(30)).is_err() {
        let _ = copier.signal(libc::SIGTERM);
        if copier.wait_timeout(Duration::from_secs(5)).is_err() {
            let _ = copier.signal(libc::SIGKILL);
        }
    }
    let answered = answered(&nginx);
    let shortfall = (tool == Tool::Ours && answered < expected).then(|| {
        let said = |out: String, prefixes: &[&str]| -> Vec<String> {
            out.lines().filter(|l| prefixes.iter().any(|p| l.starts_with(p))).map(str::to_owned).collect()
        };
        let mut lines = said(copier.stdout(), &["copier summary:", "copier target"]);
        lines.extend(
            said(copier.stderr(), &["copier: "])
                .into_iter()
                .chain(said(intercept.stdout(), &["intercept stats:"]).into_iter().last()),
        );
        lines.join("\n")
    });
    Ok(Run {
        case: case.name.clone(),
        tool,
        rep,
        expected,
        answered,
        startup_ms: startup.as_secs_f64() * 1e3,
        startup_cpu_us,
        copier_cpu_us: copier_cpu.saturating_sub(startup_cpu_us),
        intercept_cpu_us: intercept_cpu,
        copier_peak_rss_kib: copier_rss,
        intercept_peak_rss_kib: intercept_rss,
        copier_switches: copier_switches.saturating_sub(startup_switches),
        intercept_switches,
        seconds: done_at.as_secs_f64(),
        shortfall,
    })
}

/// Minimum, median and maximum.
fn spread(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = |v: &[f64]| if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (n > 0).then(|| (values[0], median(&values), values[n - 1]))
}

/// A figure of one tool: the median of its runs of `case`.
fn median(runs: &[Run], case: &str, tool: Tool, figure: impl Fn(&Run) -> f64) -> Option<f64> {
    spread(runs.iter().filter(|r| r.case == case && r.tool == tool).map(figure).collect()).map(|s| s.1)
}

/// How a figure compares: a cost (CPU, memory) is better low, success high.
#[derive(Clone, Copy)]
enum Better {
    Low,
    High,
}

/// How to read a figure off a run.
type Figure = fn(&Run) -> f64;

/// Each compared figure: its name, which way is better, and how to read it off a run.
const FIGURES: [(&str, Better, Figure); 8] = [
    ("success", Better::High, Run::success_pct),
    ("copier CPU / answered request", Better::Low, Run::copier_us_per_answered),
    ("intercept CPU / answered request", Better::Low, Run::intercept_us_per_answered),
    ("copier wake-ups / answered request", Better::Low, Run::copier_switches_per_answered),
    ("intercept wake-ups / answered request", Better::Low, Run::intercept_switches_per_answered),
    ("start-up CPU", Better::Low, |r| r.startup_cpu_us as f64),
    ("copier peak RSS", Better::Low, |r| r.copier_peak_rss_kib as f64),
    ("intercept peak RSS", Better::Low, |r| r.intercept_peak_rss_kib as f64),
];

/// Ours' advantage in one figure, repetition by repetition (each pair ran back to back):
/// theirs / ours for a cost, ours / theirs for success, so above 1 always favours ours.
fn ratios(runs: &[Run], case: &str, better: Better, figure: Figure) -> Option<(f64, f64, f64)> {
    let of = |tool, rep| runs.iter().find(|r| r.case == case && r.tool == tool && r.rep == rep);
    let mut reps: Vec<u32> = runs.iter().filter(|r| r.case == case).map(|r| r.rep).collect();
    reps.sort_unstable();
    reps.dedup();
    let ratio = |rep| {
        let (ours, theirs) = (figure(of(Tool::Ours, rep)?), figure(of(Tool::Theirs, rep)?));
        Some(match better {
            Better::Low => theirs / ours,
            Better::High => ours / theirs,
        })
    };
    spread(reps.into_iter().filter_map(ratio).collect())
}

/// The cases in the order they ran.
fn case_names(runs: &[Run]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        if !names.contains(&r.case) {
            names.push(r.case.clone());
        }
    }
    names
}

/// Three significant figures: an intercept's keep-alive request costs tenths of a µs, and one
/// decimal left its figure a quarter apart between neighbouring values.
fn three_figures(x: f64) -> String {
    match x.abs() {
        v if v < 10.0 => format!("{x:.2}"),
        v if v < 100.0 => format!("{x:.1}"),
        _ => format!("{x:.0}"),
    }
}

fn show(s: Option<(f64, f64, f64)>) -> String {
    s.map_or_else(|| "–".into(), |(lo, mid, hi)| format!("{lo:.2}–**{mid:.2}**–{hi:.2}"))
}

pub fn markdown(runs: &[Run], peers: &Peers) -> String {
    let reps = runs.iter().map(|r| r.rep).max().map_or(0, |r| r + 1);
    let mut md = format!(
        "### Against tcpcopy (built from {}), {reps} repetition(s), ours and theirs interleaved\n\n\
         Medians of each tool's runs. Success is what the test server answered; CPU per answered request (a short \
         session is one request, a keep-alive session ten) excludes start-up (exec to the first segment at the test server), reported apart, and so do \
         wake-ups (context switches of every thread). Each copier is measured \
         until the test server has every request or none for {} s, so tcpcopy's 120 s idle tail is not billed.\n\n",
        peers.sources.join(" and "),
        IDLE.as_secs()
    );
    md += "| case | tool | success | copier CPU µs / answered request | intercept CPU µs / answered request | \
           wake-ups / answered request (copier, intercept) | start-up ms (CPU ms) | copier peak RSS | intercept peak RSS | seconds |\n";
    md += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for case in case_names(runs) {
        for tool in [Tool::Ours, Tool::Theirs] {
            let m = |f: Figure| median(runs, &case, tool, f).unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| {case} | {} | {:.1} % | {} | {} | {:.2}, {:.2} | {:.1} ({:.1}) | {:.1} MiB | {:.1} MiB | {:.1} |",
                tool.name(),
                m(Run::success_pct),
                three_figures(m(Run::copier_us_per_answered)),
                three_figures(m(Run::intercept_us_per_answered)),
                m(Run::copier_switches_per_answered),
                m(Run::intercept_switches_per_answered),
                m(|r| r.startup_ms),
                m(|r| r.startup_cpu_us as f64 / 1e3),
                m(|r| r.copier_peak_rss_kib as f64 / 1024.0),
                m(|r| r.intercept_peak_rss_kib as f64 / 1024.0),
                m(|r| r.seconds),
            );
        }
    }
    md += "\nOurs' advantage, min–**median**–max over the repetitions: theirs / ours for costs, ours / theirs for \
           success (above 1: ours is cheaper or more successful).\n\n| case |";
    for (name, _, _) in FIGURES {
        let _ = write!(md, " {name} |");
    }
    md += "\n|---|";
    md += &"---:|".repeat(FIGURES.len());
    md += "\n";
    for case in case_names(runs) {
        let _ = write!(md, "| {case} |");
        for (_, better, figure) in FIGURES {
            let _ = write!(md, " {} |", show(ratios(runs, &case, better, figure)));
        }
        md += "\n";
    }
    md
}

pub fn json(runs: &[Run], peers: &Peers) -> serde_json::Value {
    let spread_json = |s: Option<(f64, f64, f64)>| {
        s.map(|(min, median, max)| serde_json::json!({"min": min, "median": median, "max": max}))
    };
    let advantage = |case: &String| {
        let mut figures = serde_json::Map::new();
        figures.insert("case".into(), case.clone().into());
        for (name, better, figure) in FIGURES {
            figures.insert(name.into(), spread_json(ratios(runs, case, better, figure)).into());
        }
        figures
    };
    serde_json::json!({
        "sources": peers.sources,
        "runs": runs.iter().map(|r| serde_json::json!({
            "case": r.case,
            "tool": r.tool.name(),
            "rep": r.rep,
            "expected": r.expected,
            "answered": r.answered,
            "success_pct": r.success_pct(),
            "shortfall": r.shortfall,
            "startup_ms": r.startup_ms,
            "startup_cpu_us": r.startup_cpu_us,
            "copier_cpu_us": r.copier_cpu_us,
            "intercept_cpu_us": r.intercept_cpu_us,
            "copier_us_per_answered": r.copier_us_per_answered(),
            "intercept_us_per_answered": r.intercept_us_per_answered(),
            "copier_peak_rss_kib": r.copier_peak_rss_kib,
            "intercept_peak_rss_kib": r.intercept_peak_rss_kib,
            "copier_switches": r.copier_switches,
            "intercept_switches": r.intercept_switches,
            "seconds": r.seconds,
        })).collect::<Vec<_>>(),
        "advantage_of_ours": case_names(runs).iter().map(advantage).collect::<Vec<_>>(),
    })
}

/// Ours' median advantage per case in success and the two CPU figures, as bars.
pub fn plot(runs: &[Run]) -> String {
    let cases = case_names(runs);
    let charts: Vec<(String, Vec<(String, f64)>)> = FIGURES[..3]
        .iter()
        .map(|&(name, better, figure)| {
            let direction = match better {
                Better::Low => "theirs / ours",
                Better::High => "ours / theirs",
            };
            let bars = cases.iter().filter_map(|c| Some((c.clone(), ratios(runs, c, better, figure)?.1))).collect();
            (format!("{name}, {direction}"), bars)
        })
        .collect();
    let charts: Vec<(&str, Vec<(String, f64)>)> = charts.iter().map(|(t, b)| (t.as_str(), b.clone())).collect();
    svg::bars(&charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(case: &str, tool: Tool, rep: u32, answered: u64, copier_cpu_us: u64) -> Run {
        Run {
            case: case.into(),
            tool,
            rep,
            expected: 100,
            answered,
            startup_ms: 1.0,
            startup_cpu_us: 1,
            copier_cpu_us,
            intercept_cpu_us: 1,
            copier_peak_rss_kib: 1,
            intercept_peak_rss_kib: 1,
            copier_switches: 1,
            intercept_switches: 1,
            seconds: 1.0,
            shortfall: None,
        }
    }

    #[test]
    fn ratios_pair_each_repetition_and_always_favour_ours_above_one() {
        let runs = vec![
            run("a", Tool::Ours, 0, 100, 1_000),
            run("a", Tool::Theirs, 0, 50, 3_000),
            run("a", Tool::Theirs, 1, 100, 2_000),
            run("a", Tool::Ours, 1, 100, 1_000),
            run("a", Tool::Ours, 2, 100, 1_000),
        ];
        // Per answered request: 10 µs against 60 (rep 0) and 20 (rep 1); rep 2 has no pair.
        assert_eq!(ratios(&runs, "a", Better::Low, Run::copier_us_per_answered), Some((2.0, 4.0, 6.0)));
        assert_eq!(ratios(&runs, "a", Better::High, Run::success_pct), Some((1.0, 1.5, 2.0)));
        assert_eq!(ratios(&runs, "b", Better::High, Run::success_pct), None);
        assert_eq!(median(&runs, "a", Tool::Ours, Run::success_pct), Some(100.0));
        let md = markdown(&runs, &Peers { tcpcopy: "t".into(), intercept: "i".into(), sources: vec![] });
        assert!(md.contains("| a | 1.00–**1.50**–2.00 | 2.00–**4.00**–6.00 |"), "{md}");
        // Ours: 10 µs of copier and 0.01 of intercept CPU per answered request.
        assert!(md.contains("| a | ours | 100.0 % | 10.0 | 0.01 |"), "{md}");
    }

    #[test]
    fn cpu_figures_keep_three_significant_figures() {
        let shown: Vec<String> = [0.4349, 1.376, 27.24, 107.3, f64::NAN].into_iter().map(three_figures).collect();
        assert_eq!(shown, ["0.43", "1.38", "27.2", "107", "NaN"]);
    }
}
