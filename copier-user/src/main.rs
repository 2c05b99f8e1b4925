//! `copier`: replays client TCP sessions to a test server, from a capture file or (copy mode)
//! live from the online interface's XDP program.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicUsize},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use common::proto::{self, DEFAULT_PORT};
use copier_engine::{
    mapping::Mappings,
    rewrite::{ClientAddrs, PortClass},
    Config, Counters, Engine, DEFAULT_MAX_OPENING,
};
use copier_user::{
    pcap::{Batch, PcapSource},
    runtime::{
        dispatch::{Backpressure, Dispatch},
        intercepts::{self, LinkStats},
        worker::{self, facts_queue, input_queue, Announced, Input, InputSender, Shared, Worker},
    },
};
use xdp_runtime::{
    tx::{RawTx, Transmit},
    xdp_tx::XdpTx,
};

mod doctor;
mod load_file;
mod metrics;
mod online;
mod progress;
mod report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Command {
    /// Check the deployment before any traffic.
    Doctor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Production NIC: copy matching packets to userspace, pass everything (default).
    Copy,
    /// A NIC that only receives mirrored traffic: redirect matching frames into AF_XDP.
    Mirror,
}

/// Mirror mode: what becomes of frames that are not copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Other {
    /// Hand them to the kernel (ARP and management traffic on the NIC keep working).
    Pass,
    /// Drop them (a pure SPAN/TAP port: the kernel never sees the mirrored traffic).
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tx {
    /// AF_XDP on the interface towards the target.
    Xdp,
    /// Raw IP sockets (the kernel routes).
    Raw,
}

/// `-s IP[:PORT][,...]`; an IPv6 address bare (`fd00::3`), bracketed (`[fd00::3]`) or with a
/// port (`[fd00::3]:36524`).
#[derive(Clone, Debug)]
struct Intercepts(Vec<SocketAddr>);

impl FromStr for Intercepts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let list = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(|i| {
                let bare = i.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(i);
                i.parse::<SocketAddr>()
                    .or_else(|_| bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DEFAULT_PORT)))
                    .map_err(|_| format!("{i:?} is not IP[:PORT] (IPv6 with a port as [ADDR]:PORT)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err("no intercept given".into());
        }
        Ok(Self(list))
    }
}

fn positive_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

#[derive(Debug, Parser)]
#[command(name = "copier", version, about = "Copy live TCP traffic, or replay a capture, to a test server.")]
#[command(group(clap::ArgGroup::new("source").args(["iface", "input"])))]
struct Args {
    /// `doctor`: check the path to each target through the intercepts, with a probe SYN from
    /// the first -c address, and say what to fix; exits 5 on a fault. Without it: copy or
    /// replay.
    #[arg(value_enum)]
    command: Option<Command>,
    /// Online-to-target mappings: [ONLINE_IP:]ONLINE_PORT-TARGET_IP:TARGET_PORT[,...]; may be
    /// repeated (the lists are joined).
    #[arg(short = 'x', long = "map", action = clap::ArgAction::Append, required = true)]
    maps: Vec<Mappings>,
    /// Intercepts to connect to: IP[:PORT][,...] (default port 36524).
    #[arg(short = 's', long = "intercepts")]
    intercepts: Intercepts,
    /// The online interface to copy from.
    #[arg(long)]
    iface: Option<String>,
    /// A pcap or pcapng file to replay instead.
    #[arg(short = 'i', long = "input")]
    input: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Mode::Copy)]
    mode: Mode,
    /// Mirror mode: pass or drop the frames that are not copied.
    #[arg(long, value_enum)]
    mirror_other: Option<Other>,
    /// Mirror mode: the mirror arrives encapsulated; look inside these tunnels:
    /// vxlan[:PORT] (AWS Traffic Mirroring, Azure vTAP; 4789), geneve[:PORT] (GCP, AWS GWLB;
    /// 6081), gre (plain GRE, ERSPAN I, II, III), comma-separated.
    #[arg(long, value_parser = online::parse_decap)]
    decap: Option<common::encap::Decap>,
    /// Interface towards the target (default: the route's).
    #[arg(long)]
    out_iface: Option<String>,
    /// Transmit path (default: AF_XDP, falling back to raw sockets if it cannot be set up).
    #[arg(long, value_enum)]
    tx: Option<Tx>,
    /// Client addresses the copies come from: a list a,b, a range a-b, or a.b.c.x (.1 to .254).
    #[arg(short = 'c', long = "clients")]
    client_addrs: Option<ClientAddrs>,
    /// Replay each session N times.
    #[arg(short = 'n', long = "multiply", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    multiply: u16,
    /// Port shift between the copies of a session.
    #[arg(short = 'f', long = "port-shift", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    port_shift: u16,
    /// Replay this percentage of sessions (chosen by flow hash: whole sessions).
    #[arg(short = 'r', long = "rate", default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
    sample: u8,
    /// Seconds over which the replayed share of sessions rises from 1 % to -r (tcpcopy's -g
    /// gradual start), from the first session on.
    #[arg(long, value_parser = xdp_runtime::positive_seconds)]
    ramp: Option<f64>,
    /// New sessions per second at most (all workers together); the rest are not replayed and
    /// are counted as rate_limited.
    #[arg(long, value_parser = positive_factor)]
    max_rate: Option<f64>,
    /// Stop after this many seconds (a capture file's replay, or a live copy).
    #[arg(long, value_parser = xdp_runtime::positive_seconds)]
    duration: Option<f64>,
    /// Live: a file of `rate = P` and `multiply = N` lines (either may be left out), read again
    /// on SIGHUP (`systemctl reload`): sessions that start afterwards follow it, sessions in
    /// progress keep their own. A file that does not parse changes nothing.
    #[arg(long, value_name = "FILE")]
    load_file: Option<PathBuf>,
    /// Offline: speed factor over the recorded timing.
    #[arg(short = 'a', long = "accelerate", default_value_t = 1.0, value_parser = positive_factor)]
    speed: f64,
    /// Offline: replay the file this many times, each round from its own client ports (as
    /// further copies of -n), paced from the round's start.
    #[arg(short = 'T', long = "loop", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rounds: u16,
    /// Offline: skip idle gaps longer than this many milliseconds.
    #[arg(short = 'I', long = "skip-gaps")]
    skip_gaps_ms: Option<u64>,
    /// Session idle timeout in seconds.
    #[arg(short = 't', long = "timeout", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Megabytes of captured payload held at most.
    #[arg(short = 'm', long = "memory", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    memory_mb: u64,
    /// Send requests as captured instead of waiting for the target's answers.
    #[arg(short = 'W', long = "no-wait")]
    no_wait: bool,
    /// Seconds a request taken by the test server may go unanswered (no answer byte, no
    /// acknowledgement) before the session goes on without its answer; counted.
    #[arg(long, default_value_t = 5.0, value_parser = xdp_runtime::positive_seconds)]
    answer_timeout: f64,
    /// Also write the summary, with each target's answers and latencies, to this file as JSON.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Compare the test server's answers with production's on the first N bytes of each answer
    /// (and its length): production's from the capture's server segments, the test server's
    /// from the intercepts (at most 65536; default 4096 with --report, else no comparison).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    payload_bytes: Option<u32>,
    /// The target running the stable build (one of -x's, beside the candidates it maps the
    /// same port to): what it and production differ in is noise, not reported for the others.
    #[arg(long)]
    baseline: Option<SocketAddr>,
    /// HTTP headers the comparison leaves out (comma-separated or repeated), e.g. Date.
    #[arg(long, value_delimiter = ',')]
    ignore_header: Vec<String>,
    /// Write report.json to this directory: per target, the exchanges compared with
    /// production's and how they differ, with examples.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// How log records are written (standard error).
    #[arg(long, value_enum, default_value_t)]
    log_format: xdp_runtime::logging::LogFormat,
    /// Replay only sessions whose SYN was captured.
    #[arg(short = 'O', long = "only-complete")]
    only_complete: bool,
    /// Sessions per worker opening at once (SYN or first request unacknowledged by the test
    /// server); more wait their turn, so bursts do not overrun its SYN and accept queues.
    #[arg(long, default_value_t = DEFAULT_MAX_OPENING as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_opening: u32,
    /// Worker threads, each pinned to a core, owning the sessions of its share of the flows.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 5.0, value_parser = xdp_runtime::positive_seconds)]
    stats_interval: f64,
    /// A file holding the secret the intercepts require.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Replace an XDP program this process did not attach.
    #[arg(long)]
    force: bool,
    /// Live capture: microseconds a reader pauses after a pass that took a partial batch, so
    /// frames reach the workers in fewer, larger batches (a NIC's interrupt moderation); 0:
    /// never. A frame may wait this long before it is replayed; a full batch never waits.
    #[arg(long, default_value_t = online::DEFAULT_COALESCE_US, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    coalesce_us: u32,
}

impl Args {
    /// Every `-x` argument's mappings (`main` checks them as one list first).
    fn mappings(&self) -> Mappings {
        Mappings(self.maps.iter().flat_map(|m| m.0.iter().cloned()).collect())
    }

    /// Bytes of each answer compared (0: no comparison).
    fn payload_bytes(&self) -> u32 {
        self.payload_bytes.unwrap_or(if self.report.is_some() { 4096 } else { 0 })
    }

    /// The engine configuration of worker `index`.
    fn worker_config(&self, index: u16) -> Config {
        let mut c = self.engine_config();
        c.ports = PortClass::new(index, self.workers);
        c
    }

    fn engine_config(&self) -> Config {
        let mut c = Config::new(self.mappings().0);
        c.client_addrs = self.client_addrs.clone();
        c.multiply = self.multiply;
        c.port_shift = self.port_shift;
        c.sample_percent = self.sample;
        c.wait_for_response = !self.no_wait;
        c.only_complete = self.only_complete;
        c.idle_timeout_us = self.timeout * 1_000_000;
        c.max_buffered_bytes = (self.memory_mb as usize) << 20;
        c.max_opening = self.max_opening as usize;
        c.answer_timeout_us = (self.answer_timeout * 1e6) as u64;
        c.payload_bytes = self.payload_bytes() as usize;
        c.ignored_headers = copier_engine::compare::IgnoredHeaders::new(&self.ignore_header);
        c.baseline = self.baseline.map(common::endpoint::Endpoint::from);
        c.ramp_us = self.ramp.map_or(0, |s| (s * 1e6) as u64);
        c.max_sessions_per_s = self.max_rate.map(|r| r / f64::from(self.workers));
        // Wall-clock milliseconds: timestamps keep rising from one run to the next.
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        c.ts_offset_ms = unix_ms as u32;
        c
    }

    /// What this run needs: raw sockets always (the transmit fallback); live capture, the XDP
    /// program; mirror mode, AF_XDP receive (AF_XDP transmit falls back to raw sockets).
    fn capabilities(&self) -> Vec<xdp_runtime::caps::Cap> {
        use xdp_runtime::caps::Cap;
        let mut caps = vec![Cap::NetRaw];
        if self.iface.is_some() {
            caps.extend([Cap::Bpf, Cap::Perfmon, Cap::NetAdmin]);
        }
        if self.iface.is_some() && self.mode == Mode::Mirror {
            caps.push(Cap::IpcLock);
        }
        caps
    }

    /// The most targets one online port is mapped to.
    fn fan_out(&self) -> usize {
        let mappings = self.mappings();
        mappings.0.iter().map(|m| mappings.0.iter().filter(|o| o.online == m.online).count()).max().unwrap_or(1)
    }

    /// Flag combinations that make no sense, as a usage error.
    fn inconsistent(&self) -> Option<&'static str> {
        if self.command == Some(Command::Doctor) {
            return self.client_addrs.is_none().then_some(
                "doctor probes from a copied client address: give one with -c (one the test host routes via the assistant host)",
            );
        }
        if self.iface.is_none() && self.input.is_none() {
            return Some("a source is needed: --iface IFACE (live) or -i FILE (a capture)");
        }
        if self.mode == Mode::Mirror && self.input.is_some() {
            return Some("--mode mirror reads an interface (--iface), not a capture file");
        }
        if self.mirror_other.is_some() && self.mode != Mode::Mirror {
            return Some("--mirror-other goes with --mode mirror");
        }
        if self.decap.is_some() && self.mode != Mode::Mirror {
            return Some("--decap goes with --mode mirror");
        }
        if self.out_iface.is_some() && self.tx == Some(Tx::Raw) {
            return Some("--out-iface goes with --tx xdp (raw sockets follow the kernel's routes)");
        }
        if self.rounds > 1 && self.input.is_none() {
            return Some("--loop replays a capture file (-i) again");
        }
        if self.load_file.is_some() && self.input.is_some() {
            return Some("--load-file changes a live copy (--iface), not a capture file's replay");
        }
        let mappings = self.mappings();
        if !copies_fit(self.rounds, self.multiply, self.fan_out()) {
            return Some("--loop times -n times the targets of a port must stay below 65536 copies");
        }
        if let Some(b) = self.baseline {
            let online = mappings.0.iter().find(|m| m.target == b).map(|m| m.online);
            let Some(online) = online else { return Some("--baseline must be one of -x's targets") };
            if mappings.0.iter().filter(|m| m.online == online).count() < 2 {
                return Some("--baseline needs candidates: map its port to another target too (-x P-BASE,P-CANDIDATE)");
            }
            if self.payload_bytes() == 0 {
                return Some("--baseline goes with the comparison: --report DIR or --payload-bytes N");
            }
        }
        None
    }
}

/// After the capture file is done, how long the open sessions may go without one finishing.
const OFFLINE_GRACE: Duration = Duration::from_secs(5);
/// Batches of captured frames queued per worker.
const INPUT_QUEUE: usize = 4096;
/// A capture file's packet due within this of now is sent at once: one timer per millisecond
/// at most, not one per packet.
const PACE_SLACK: Duration = Duration::from_millis(1);
/// Batches of reply facts queued per worker (a queue of their own: see `facts_queue`).
const FACTS_QUEUE: usize = 4096;
/// How long replay waits for the intercepts before it starts.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    xdp_runtime::logging::init(args.log_format);
    if let Err(e) = Mappings::joined(&args.maps) {
        eprintln!("copier: error: -x: {e}");
        return std::process::ExitCode::from(2);
    }
    if let Some(why) = args.inconsistent() {
        eprintln!("copier: error: {why}");
        return std::process::ExitCode::from(2);
    }
    if args.command == Some(Command::Doctor) {
        return doctor(&args);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run(args))) {
        Ok(None) => std::process::ExitCode::SUCCESS,
        Ok(Some((status, why))) => {
            eprintln!("copier: failed: {why}");
            std::process::ExitCode::from(status)
        }
        Err(err) => {
            // The chain of causes, not a backtrace: users act on the message.
            eprintln!("copier: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `copier doctor`: exit 0 when every check passed, 5 when one found a fault, 1 on an error.
fn doctor(args: &Args) -> std::process::ExitCode {
    let checked = xdp_runtime::caps::require(&[xdp_runtime::caps::Cap::NetRaw], "copier doctor").and_then(|()| {
        let secret = args.secret_file.as_deref().map(xdp_runtime::read_secret).transpose()?;
        let targets: Vec<SocketAddr> = args.mappings().0.iter().map(|m| m.target).collect();
        let client = args.client_addrs.as_ref().expect("checked by inconsistent()").first();
        let online = args.iface.as_deref().filter(|_| args.mode == Mode::Copy);
        doctor::run(&args.intercepts.0, secret.as_deref(), &targets, client, online)
    });
    match checked {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(EXIT_FAULT_FOUND),
        Err(err) => {
            eprintln!("copier: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The pieces every mode shares: the workers, the intercept links, the stats.
struct Pipeline {
    /// One queue per worker, in worker order.
    inputs: Vec<InputSender>,
    stop: Arc<AtomicBool>,
    shared: Vec<Arc<Shared>>,
    links: Arc<LinkStats>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// The first worker's runtime, which also runs the links and the readers.
    first_worker: tokio::runtime::Handle,
    /// Why the capture file ended early, if it did (its reader says so when done).
    file_error: Arc<Mutex<Option<String>>>,
    started: Instant,
}

/// One transmit path per worker: AF_XDP sockets on TX queues 0..workers, or raw sockets.
fn open_transmit(args: &Args) -> anyhow::Result<Vec<Transmit>> {
    let n = args.workers as u32;
    let raw = || -> anyhow::Result<Vec<Transmit>> {
        (0..n)
            .map(|_| {
                Ok(Transmit::Raw(RawTx::open().context("opening raw IP sockets for --tx raw (needs CAP_NET_RAW)")?))
            })
            .collect()
    };
    let xdp = || -> anyhow::Result<Vec<Transmit>> {
        let targets: Vec<IpAddr> = args.mappings().0.iter().map(|m| m.target.ip()).collect();
        let mut out = Vec::new();
        for queue in 0..n {
            let xdp = XdpTx::open(args.out_iface.as_deref(), &targets, queue)
                .context("setting up AF_XDP transmit (--tx xdp)")?;
            log::info!(
                "AF_XDP transmit on {} queue {queue} ({})",
                xdp.iface,
                if xdp.zero_copy { "zero-copy" } else { "copy mode" }
            );
            out.push(Transmit::Xdp(Box::new(xdp)));
        }
        Ok(out)
    };
    match args.tx {
        Some(Tx::Raw) => raw(),
        Some(Tx::Xdp) => xdp(),
        None => xdp().or_else(|err| {
            log::warn!("{err:#}; transmitting through raw sockets instead");
            raw()
        }),
    }
}

/// Whether every copy of a flow (rounds × `-n` × targets of its port) has a copy index of its own.
fn copies_fit(rounds: u16, multiply: u16, fan_out: usize) -> bool {
    u32::from(rounds) * u32::from(multiply) * fan_out as u32 <= u32::from(u16::MAX)
}

/// The live load (`-r`, `-n`) and, on SIGHUP, the load file's: each worker applies it to the
/// sessions that start afterwards.
struct LiveLoad {
    rate: u8,
    multiply: u16,
}

impl LiveLoad {
    async fn reload(&mut self, args: &Args, workers: &[InputSender]) {
        let Some(path) = &args.load_file else {
            log::warn!("SIGHUP: no --load-file to read; the load stays -r {} -n {}", self.rate, self.multiply);
            return;
        };
        let load = match load_file::read(path) {
            Ok(load) => load,
            Err(err) => {
                log::error!("SIGHUP: {err}; the load stays -r {} -n {}", self.rate, self.multiply);
                return;
            }
        };
        let (rate, multiply) = (load.rate.unwrap_or(self.rate), load.multiply.unwrap_or(self.multiply));
        if !copies_fit(args.rounds, multiply, args.fan_out()) {
            log::error!("SIGHUP: -n {multiply} times the targets of a port is more than 65535 copies; the load stays");
            return;
        }
        for w in workers {
            if tokio::time::timeout(Duration::from_secs(1), w.send(Input::Load { rate, multiply })).await.is_err() {
                log::error!("SIGHUP: a worker took no input for a second; the load may differ between workers");
            }
        }
        log::info!(
            "SIGHUP: load -r {rate} -n {multiply} from {} for the sessions that start from now on",
            path.display()
        );
        (self.rate, self.multiply) = (rate, multiply);
    }
}

/// The largest IP packet a worker sends: what its transmit path carries, and at most the MTU
/// of the interface each target's route leaves by (a target whose MSS allows more gets
/// segments that fit, not ones the interface refuses).
fn max_packet(args: &Args, tx: &Transmit) -> usize {
    let mut max = tx.max_packet();
    for target in args.mappings().0.iter().map(|m| m.target.ip()) {
        match xdp_runtime::netlink::path_mtu(target) {
            Ok((_, mtu)) => max = max.min(mtu as usize),
            Err(err) => log::warn!("the MTU towards {target} is unknown ({err}): segments follow its MSS alone"),
        }
    }
    max
}

/// Starts the workers; the first also runs the intercept links and the capture file's reader.
fn start_pipeline(args: &Args, secret: Option<Arc<[u8]>>, file: Option<PcapSource>) -> anyhow::Result<Pipeline> {
    let transmit = open_transmit(args)?;
    let cores = xdp_runtime::allowed_cores();
    if cores.len() < args.workers as usize {
        log::warn!("{} workers on {} cores: some share a core", args.workers, cores.len());
    }
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
    let links = Arc::new(LinkStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let n = args.workers as usize;
    let running = Arc::new(AtomicUsize::new(n));
    let (inputs, input_rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| input_queue(INPUT_QUEUE)).unzip();
    let (facts, facts_rxs): (Vec<_>, Vec<_>) =
        inputs.iter().map(|doorbell| facts_queue(doorbell.clone(), FACTS_QUEUE)).unzip();
    let announced: Vec<Arc<Announced>> = (0..n).map(|_| Arc::default()).collect();
    let space = args.client_addrs.as_ref().and_then(|c| {
        let frame = intercepts::space_frame(&c.ranges());
        if frame.is_none() {
            log::info!("-c holds more than {} ranges of addresses: not declared to the intercepts", proto::MAX_RANGES);
        }
        frame
    });
    let first: Vec<Vec<u8>> = space
        .into_iter()
        .chain(intercepts::want_payload_frame(args.payload_bytes()))
        .chain([intercepts::solo_frame()])
        .collect();
    let mut tasks: Vec<worker::Task> = vec![Box::pin(intercepts::run(
        args.intercepts.0.clone(),
        secret,
        first,
        events_rx,
        announced.clone(),
        facts,
        Arc::clone(&links),
    ))];
    let shared: Vec<Arc<Shared>> = (0..n).map(|_| Arc::default()).collect();
    let file_error = Arc::new(Mutex::new(None));
    if let Some(source) = file {
        let backpressure = Backpressure {
            backlogs: shared.iter().map(|s| Arc::clone(&s.backlog)).collect(),
            limit: args.max_opening as usize,
            stop: Arc::clone(&stop),
        };
        let reader = Reader {
            dispatch: Dispatch::new(inputs.clone()).with_backpressure(backpressure),
            path: args.input.clone().expect("a file source has a path"),
            rounds: args.rounds,
            speed: args.speed,
            skip_gap_us: args.skip_gaps_ms.map(|ms| ms * 1000),
            stop: Arc::clone(&stop),
            links: Arc::clone(&links),
            intercepts: args.intercepts.0.len(),
        };
        let error = Arc::clone(&file_error);
        tasks.push(Box::pin(async move { *error.lock().expect("not poisoned") = reader.feed(source).await }));
    }
    let runtimes =
        (0..n).map(|_| Worker::runtime()).collect::<Result<Vec<_>, _>>().context("building the workers' runtimes")?;
    let first_worker = runtimes[0].handle().clone();
    let mut workers = Vec::new();
    let queues = input_rxs.into_iter().zip(facts_rxs).zip(announced).zip(&shared).zip(runtimes);
    for ((index, tx), ((((inputs, facts), announced), shared), runtime)) in (0..args.workers).zip(transmit).zip(queues)
    {
        let worker = Worker {
            index,
            core: Some(cores[index as usize % cores.len()]),
            engine: Engine::new(Config { max_packet: max_packet(args, &tx), ..args.worker_config(index) }),
            tx,
            inputs,
            facts,
            events: events_tx.clone(),
            announced,
            shared: Arc::clone(shared),
            stop: Arc::clone(&stop),
            grace: OFFLINE_GRACE,
            tasks: std::mem::take(&mut tasks),
            running: Arc::clone(&running),
        };
        workers.push(
            std::thread::Builder::new().name(format!("copier-worker-{index}")).spawn(move || worker.run(runtime))?,
        );
    }
    Ok(Pipeline { inputs, stop, shared, links, workers, first_worker, file_error, started: Instant::now() })
}

/// The copier's own `name=value` counters, summed over the workers.
fn copier_pairs(shared: &[Arc<Shared>], links: &LinkStats) -> Vec<(&'static str, u64)> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut pairs = Counters::default().pairs();
    let (mut active, mut buffered, mut tx_errors) = (0, 0, 0);
    for s in shared {
        let worker = s.counters.lock().expect("not poisoned").pairs();
        for (total, (_, v)) in pairs.iter_mut().zip(worker) {
            total.1 += v;
        }
        let (a, b) = *s.active.lock().expect("not poisoned");
        (active, buffered) = (active + a as u64, buffered + b as u64);
        tx_errors += *s.tx_errors.lock().expect("not poisoned");
    }
    pairs.push(("active", active));
    pairs.push(("buffered", buffered));
    pairs.push(("tx_errors", tx_errors));
    pairs.push(("cpu_us", xdp_runtime::cpu::process_cpu_us()));
    pairs.push(("intercepts", links.connected.load(Relaxed)));
    pairs.push(("reconnects", links.reconnects.load(Relaxed)));
    pairs.push(("facts", links.facts.load(Relaxed)));
    pairs.push(("facts_dropped", links.facts_dropped.load(Relaxed)));
    pairs.extend(report::pairs(&report::exchanges(shared)));
    pairs
}

fn line(label: &str, pairs: &[(&'static str, u64)], before: &[(&'static str, u64)], seconds: f64) -> String {
    let mut s = format!("copier {label}:");
    for (k, v) in pairs {
        s += &format!(" {k}={v}");
    }
    if !before.is_empty() {
        s += " | per second:";
        for ((k, v), (_, b)) in pairs.iter().zip(before) {
            if ["sessions", "completed", "requests", "sent", "bytes", "cpu_us"].contains(k) {
                s += &format!(" {k}={:.1}", v.saturating_sub(*b) as f64 / seconds.max(1e-9));
            }
        }
    }
    s
}

/// What only the summary says: rates over the whole run, and what the run cost.
fn cost_pairs(pairs: &[(&'static str, u64)], p: &Pipeline) -> Vec<(&'static str, u64)> {
    let seconds = p.started.elapsed().as_secs_f64().max(1e-6);
    let get = |name: &str| pairs.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
    let worker_cpu: u64 = p.shared.iter().map(|s| s.cpu_us.load(std::sync::atomic::Ordering::Relaxed)).sum();
    vec![
        ("elapsed_ms", (seconds * 1e3) as u64),
        ("pps", (get("sent") as f64 / seconds) as u64),
        ("workers", p.shared.len() as u64),
        ("worker_cpu_us", worker_cpu),
        ("cpu_user_us", xdp_runtime::cpu::process_user_cpu_us()),
        ("peak_rss_kib", xdp_runtime::cpu::peak_rss_kib()),
    ]
}

async fn wait_for_intercepts(links: &LinkStats, wanted: usize) {
    let connected = links.wait_connected(wanted, CONNECT_WAIT).await;
    if connected < wanted {
        log::warn!("connected to {connected} of {wanted} intercepts after {CONNECT_WAIT:?}; replies through the others are lost until they connect");
    }
}

/// A capture file's reader, a task on the first worker's runtime.
struct Reader {
    dispatch: Dispatch,
    /// The file, opened again for each round after the first.
    path: PathBuf,
    /// `--loop`: rounds to replay.
    rounds: u16,
    /// `-a`: the recorded pace is divided by it.
    speed: f64,
    /// `-I`: gaps longer than this are cut.
    skip_gap_us: Option<u64>,
    stop: Arc<AtomicBool>,
    links: Arc<LinkStats>,
    intercepts: usize,
}

impl Reader {
    /// Feeds the capture file to the workers at its recorded pace (scaled by `-a`, gaps over
    /// `-I` cut); returns the file's error, if it ended early.
    async fn feed(mut self, mut source: PcapSource) -> Option<String> {
        // A file's first sessions would lose their replies to an intercept not yet connected;
        // live traffic does not wait (SYN retransmission covers a late intercept).
        wait_for_intercepts(&self.links, self.intercepts).await;
        let dispatch = &mut self.dispatch;
        let mut start = Instant::now();
        let (mut first, mut last, mut skipped) = (None::<u64>, 0u64, 0u64);
        let mut batch = Batch::default();
        let mut packets = 0u64;
        let mut round = 1;
        let mut now = Duration::ZERO;
        let outcome = loop {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                break None;
            }
            let more = match source.next_batch(&mut batch) {
                Ok(more) => more,
                Err(err) => {
                    // Replay what was read, then report.
                    for (ts, link, p) in batch.iter() {
                        let _ = dispatch.push_waiting(ts, link, p).await;
                    }
                    break Some(err.to_string());
                }
            };
            for (ts, link, p) in batch.iter() {
                let base = *first.get_or_insert(ts);
                if let Some(gap) = self.skip_gap_us {
                    if ts.saturating_sub(last) > gap && last != 0 {
                        skipped += ts - last - gap;
                    }
                }
                last = ts;
                let due =
                    Duration::from_secs_f64(ts.saturating_sub(base).saturating_sub(skipped) as f64 / 1e6 / self.speed);
                // The clock is read only for a packet due later than it last said: an older
                // reading is earlier still, so a packet due before it needs no new one (the
                // reads were 2 % of a worker's profile at maximum speed).
                if due > now + PACE_SLACK {
                    now = start.elapsed();
                    if due > now + PACE_SLACK {
                        if dispatch.flush_waiting().await.is_err() {
                            return None;
                        }
                        tokio::time::sleep(due - now).await;
                        // The sleep ends at `due` or later.
                        now = due;
                    }
                }
                if dispatch.push_waiting(ts, link, p).await.is_err() {
                    return None;
                }
                packets += 1;
            }
            if !more && round < self.rounds {
                // The next round: the file again from its start, paced from now.
                match PcapSource::open(&self.path) {
                    Ok(again) => source = again,
                    Err(err) => break Some(err.to_string()),
                }
                if dispatch.next_round().await.is_err() {
                    return None;
                }
                (start, first, last, skipped, now) = (Instant::now(), None, 0, 0, Duration::ZERO);
                round += 1;
                continue;
            }
            if !more {
                break None;
            }
        };
        log::info!("capture file read: {packets} packets replayed, {} records skipped (not IP)", source.skipped);
        if source.over_snaplen > 0 {
            log::warn!(
                "{} records were longer than the file's snap length says any is; read whole, as tcpdump reads them",
                source.over_snaplen
            );
        }
        self.dispatch.finish().await;
        outcome
    }
}

/// Runs until the capture is replayed or a signal comes; `Some((status, why))` if the run did
/// not do its job although nothing failed.
async fn run(args: Args) -> anyhow::Result<Option<(u8, String)>> {
    xdp_runtime::caps::require(&args.capabilities(), "copier")?;
    let secret = args.secret_file.as_deref().map(xdp_runtime::read_secret).transpose()?;
    let source = match &args.input {
        Some(path) => Some(PcapSource::open(path)?),
        None => None,
    };
    let live = source.is_none();
    // On a terminal, a capture's replay shows a live line instead of printing stats lines.
    let mut progress = match (&source, &args.input) {
        (Some(s), Some(path)) if std::io::IsTerminal::is_terminal(&std::io::stdout()) => {
            let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
            Some(progress::Progress::start(s.progress(), bytes))
        }
        _ => None,
    };
    let mut pipeline = start_pipeline(&args, secret, source)?;
    for m in &args.mappings().0 {
        log::info!("replaying {} to {}", m.online, m.target);
    }
    let mut online = None;
    if live {
        let iface = args.iface.as_deref().expect("clap requires a source");
        let mode = match args.mode {
            Mode::Copy => online::OnlineMode::Copy { answers: args.payload_bytes() > 0 },
            Mode::Mirror => online::OnlineMode::Mirror {
                drop_other: args.mirror_other == Some(Other::Drop),
                answers: args.payload_bytes() > 0,
                decap: args.decap.unwrap_or_default(),
            },
        };
        online = Some(online::Capture::start(
            iface,
            &args.mappings(),
            args.force,
            mode,
            args.coalesce_us,
            pipeline.inputs.clone(),
            &pipeline.first_worker,
        )?);
    }
    if let Some(addr) = args.metrics {
        let xdp: Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync> = match &online {
            Some(capture) => Box::new(capture.pairs_source()),
            None => Box::new(Vec::new),
        };
        metrics::serve(addr, xdp, pipeline.shared.clone(), Arc::clone(&pipeline.links))?;
    }

    let interval = Duration::from_secs_f64(args.stats_interval);
    let stop_signal = xdp_runtime::stop_signal();
    tokio::pin!(stop_signal);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut load = LiveLoad { rate: args.sample, multiply: args.multiply };
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let (mut before, mut since) = (copier_pairs(&pipeline.shared, &pipeline.links), Instant::now());
    loop {
        tokio::select! {
            stop = &mut stop_signal => {
                log::info!("stopping: {:?}", stop?);
                pipeline.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            _ = hangup.recv() => load.reload(&args, &pipeline.inputs).await,
            _ = ticker.tick() => {
                if pipeline.workers.iter().all(|w| w.is_finished()) {
                    break;
                }
                if pipeline.links.refused.lock().expect("not poisoned").is_some() {
                    pipeline.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                if args.duration.is_some_and(|d| pipeline.started.elapsed().as_secs_f64() >= d) {
                    log::info!("stopping: --duration reached");
                    pipeline.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                if let Some(p) = &mut progress {
                    p.update(&copier_pairs(&pipeline.shared, &pipeline.links));
                } else if since.elapsed() >= interval {
                    let mut now = copier_pairs(&pipeline.shared, &pipeline.links);
                    if let Some(c) = &online {
                        now.splice(0..0, c.pairs()?);
                    }
                    println!("{}", line("stats", &now, &before, since.elapsed().as_secs_f64()));
                    (before, since) = (now, Instant::now());
                }
            }
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    let xdp_totals = online.as_ref().map(|c| c.pairs()).transpose()?.unwrap_or_default();
    drop(online); // detaches the XDP program before anything else can fail
    for worker in pipeline.workers.drain(..) {
        worker.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
    }
    let mut totals = xdp_totals;
    totals.extend(copier_pairs(&pipeline.shared, &pipeline.links));
    totals.extend(cost_pairs(&totals, &pipeline));
    println!("{}", line("summary", &totals, &[], 0.0));
    let exchanges = report::exchanges(&pipeline.shared);
    for l in report::target_lines(&exchanges, args.baseline) {
        println!("{l}");
    }
    if let Some(path) = &args.summary_json {
        report::write_json(path, &report::json(&totals, &exchanges, args.baseline))?;
    }
    if let Some(dir) = &args.report {
        report::write_report(dir, &exchanges, args.baseline)?;
    }
    if let Some(err) = pipeline.file_error.lock().expect("not poisoned").take() {
        eprintln!("copier: warning: {err}");
    }
    if let Some(refused) = pipeline.links.refused.lock().expect("not poisoned").take() {
        return Ok(Some((EXIT_REFUSED, refused)));
    }
    Ok(report::failure(&totals, &exchanges, !live).map(|why| (EXIT_NOTHING_ANSWERED, why)))
}

/// Exit statuses besides 0 (success), 1 (an error) and 2 (a usage error).
const EXIT_NOTHING_ANSWERED: u8 = 3;
/// `copier doctor` found something to fix.
const EXIT_FAULT_FOUND: u8 = 5;
/// An intercept refused this copier for good: wrong secret or protocol version, client
/// endpoints another copier owns, or an address outside its `--allow` list.
const EXIT_REFUSED: u8 = 4;

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn intercepts_take_a_default_port() {
        let i: Intercepts = "10.0.0.9,10.0.0.8:4000,[fd00::1]:5,fd00::2,[fd00::3]".parse().unwrap();
        assert_eq!(i.0[0], "10.0.0.9:36524".parse().unwrap());
        assert_eq!(i.0[1].port(), 4000);
        assert_eq!(i.0[2], "[fd00::1]:5".parse().unwrap());
        assert_eq!(i.0[3], "[fd00::2]:36524".parse().unwrap());
        assert_eq!(i.0[4], "[fd00::3]:36524".parse().unwrap());
        for bad in ["host:1", "[10.0.0.1]x", "[fd00::1", "10.0.0.1:"] {
            assert!(bad.parse::<Intercepts>().is_err(), "{bad}");
        }
    }

    #[test]
    fn repeated_maps_are_joined() {
        let argv = ["copier", "-x", "80-10.0.0.2:8080", "-x", "80-10.0.0.4:8080,81-10.0.0.2:81", "-s", "10.0.0.3"];
        let args = Args::try_parse_from(argv.iter().chain(&["-i", "x.pcap", "--baseline", "10.0.0.2:8080"])).unwrap();
        assert_eq!(args.mappings().0.len(), 3);
        assert_eq!(args.engine_config().mappings.iter().filter(|m| m.online.port == 80).count(), 2);
        assert!(args.inconsistent().is_some(), "--baseline without a comparison");
        assert!(Args::try_parse_from(["copier", "-s", "10.0.0.3", "-i", "x.pcap"]).is_err(), "-x is required");
    }

    #[test]
    fn tcpcopy_flags_reach_the_engine() {
        let args = Args::try_parse_from([
            "copier",
            "-x",
            "80-10.0.0.2:8080",
            "-s",
            "10.0.0.3",
            "-i",
            "x.pcap",
            "-c",
            "10.9.0.1-10.9.0.4",
            "-n",
            "3",
            "-f",
            "7",
            "-r",
            "40",
            "-t",
            "9",
            "-m",
            "2",
            "-W",
            "-O",
            "--max-opening",
            "64",
        ])
        .unwrap();
        let c = args.engine_config();
        assert_eq!((c.multiply, c.port_shift, c.sample_percent, c.idle_timeout_us), (3, 7, 40, 9_000_000));
        assert_eq!((c.wait_for_response, c.only_complete, c.max_buffered_bytes), (false, true, 2 << 20));
        assert_eq!(c.max_opening, 64);
        assert_eq!(c.client_addrs.unwrap().len(), 4);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for argv in [
            &["copier", "-x", "80", "-s", "10.0.0.3", "-i", "f"][..],
            &["copier", "-x", "80-10.0.0.2:8080", "-i", "f"],
            &["copier", "-x", "80-10.0.0.2:8080", "-s", "10.0.0.3", "-i", "f", "--iface", "eth0"],
            &["copier", "-x", "80-10.0.0.2:8080", "-s", "10.0.0.3", "-i", "f", "-r", "0"],
            &["copier", "-x", "80-10.0.0.2:8080", "-s", "10.0.0.3", "-i", "f", "-a", "0"],
            &["copier", "-x", "80-10.0.0.2:8080", "-s", "10.0.0.3", "-i", "f", "-c", "10.0.0.9-10.0.0.1"],
        ] {
            let err = Args::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn inconsistent_flags_are_refused_with_the_reason() {
        let base = ["copier", "-x", "80-10.0.0.2:8080", "-s", "10.0.0.3"];
        for (extra, why) in [
            (&["-i", "f", "--mode", "mirror"][..], "--iface"),
            (&[][..], "a source is needed"),
            (&["doctor"][..], "-c"),
            (&["--iface", "eth0", "--loop", "2"][..], "capture file"),
            (&["-i", "f", "--loop", "1000", "-n", "100"][..], "65536"),
            (&["-i", "f", "--baseline", "10.0.0.9:80", "--report", "r"][..], "one of -x's targets"),
            (&["-i", "f", "--baseline", "10.0.0.2:8080", "--report", "r"][..], "needs candidates"),
            (&["--iface", "m0", "--mirror-other", "drop"], "--mode mirror"),
            (&["--iface", "m0", "--decap", "vxlan"], "--mode mirror"),
            (&["--iface", "m0", "--tx", "raw", "--out-iface", "x"], "--tx xdp"),
        ] {
            let args = Args::try_parse_from(base.iter().chain(extra)).unwrap();
            assert!(args.inconsistent().is_some_and(|w| w.contains(why)), "{extra:?}");
        }
        let fine = Args::try_parse_from(base.iter().chain(&[
            "--iface",
            "m0",
            "--mode",
            "mirror",
            "--mirror-other",
            "drop",
            "--workers",
            "2",
            "--decap",
            "vxlan:8472,gre",
        ]))
        .unwrap();
        assert_eq!(fine.inconsistent(), None);
        assert_eq!(fine.worker_config(1).ports, PortClass::new(1, 2));
        assert!(Args::try_parse_from(base.iter().chain(&["--iface", "m0", "--workers", "0"])).is_err());
    }
}
