//! `copier`: replays client TCP sessions to a test server, from a capture file or (copy mode)
//! live from the online interface's XDP program.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::{atomic::AtomicBool, mpsc::sync_channel, Arc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use common::proto::DEFAULT_PORT;
use copier_user::{
    engine::{rewrite::ClientAddrs, Config, Engine},
    mapping::Mappings,
    pcap::{Batch, PcapSource},
    runtime::{
        intercepts::{self, LinkStats},
        tx::{RawTx, Transmit},
        xdp_tx::XdpTx,
        worker::{Announced, Input, Shared, Worker},
    },
};

mod online;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Production NIC: copy matching packets to userspace, pass everything (default).
    Copy,
    /// A NIC that only receives mirrored traffic: redirect matching frames into AF_XDP.
    Mirror,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tx {
    /// AF_XDP on the interface towards the target.
    Xdp,
    /// Raw IP sockets (the kernel routes).
    Raw,
}

/// `-s IP[:PORT][,...]`
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
                i.parse::<SocketAddr>()
                    .or_else(|_| i.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DEFAULT_PORT)))
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
#[command(group(clap::ArgGroup::new("source").required(true).args(["iface", "input"])))]
struct Args {
    /// Online-to-target mappings: [ONLINE_IP:]ONLINE_PORT-TARGET_IP:TARGET_PORT[,...]
    #[arg(short = 'x', long = "map")]
    mappings: Mappings,
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
    /// Interface towards the target (default: the route's).
    #[arg(long)]
    out_iface: Option<String>,
    /// Transmit path (default: AF_XDP, falling back to raw sockets if it cannot be set up).
    #[arg(long, value_enum)]
    tx: Option<Tx>,
    /// Client addresses the copies come from: a list a,b or a range a-b.
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
    /// Offline: speed factor over the recorded timing.
    #[arg(short = 'a', long = "accelerate", default_value_t = 1.0, value_parser = positive_factor)]
    speed: f64,
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
    /// Replay only sessions whose SYN was captured.
    #[arg(short = 'O', long = "only-complete")]
    only_complete: bool,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
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
}

impl Args {
    fn engine_config(&self) -> Config {
        let mut c = Config::new(self.mappings.0.clone());
        c.client_addrs = self.client_addrs.clone();
        c.multiply = self.multiply;
        c.port_shift = self.port_shift;
        c.sample_percent = self.sample;
        c.wait_for_response = !self.no_wait;
        c.only_complete = self.only_complete;
        c.idle_timeout_us = self.timeout * 1_000_000;
        c.max_buffered_bytes = (self.memory_mb as usize) << 20;
        c
    }

    /// What this build cannot do yet, as a usage error.
    fn unsupported(&self) -> Option<&'static str> {
        if self.mode == Mode::Mirror {
            return Some("--mode mirror is not implemented yet; use copy mode");
        }
        if self.workers != 1 {
            return Some("only --workers 1 is implemented so far");
        }
        if self.out_iface.is_some() && self.tx == Some(Tx::Raw) {
            return Some("--out-iface goes with --tx xdp (raw sockets follow the kernel's routes)");
        }
        None
    }
}

/// After the capture file is done, how long open sessions may take to finish.
const OFFLINE_GRACE: Duration = Duration::from_secs(5);
/// How long replay waits for the intercepts before it starts.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Some(why) = args.unsupported() {
        eprintln!("copier: error: {why}");
        return std::process::ExitCode::from(2);
    }
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

/// The pieces every mode shares: the worker thread, the intercept links, the stats.
struct Pipeline {
    inputs: std::sync::mpsc::SyncSender<Input>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    links: Arc<LinkStats>,
    worker: std::thread::JoinHandle<()>,
}

fn start_pipeline(args: &Args, secret: Option<Arc<[u8]>>) -> anyhow::Result<Pipeline> {
    let raw = || -> anyhow::Result<Transmit> {
        Ok(Transmit::Raw(RawTx::open().context("opening raw IP sockets for --tx raw (needs CAP_NET_RAW)")?))
    };
    let xdp = || -> anyhow::Result<Transmit> {
        let targets: Vec<IpAddr> = args.mappings.0.iter().map(|m| m.target.ip()).collect();
        let xdp = XdpTx::open(args.out_iface.as_deref(), &targets).context("setting up AF_XDP transmit (--tx xdp)")?;
        log::info!("AF_XDP transmit on {} ({})", xdp.iface, if xdp.zero_copy { "zero-copy" } else { "copy mode" });
        Ok(Transmit::Xdp(Box::new(xdp)))
    };
    let tx = match args.tx {
        Some(Tx::Raw) => raw()?,
        Some(Tx::Xdp) => xdp()?,
        None => xdp().or_else(|err| {
            log::warn!("{err:#}; transmitting through raw sockets instead");
            raw()
        })?,
    };
    let (inputs_tx, inputs_rx) = sync_channel(4096);
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
    let announced = Arc::new(Announced::default());
    let shared = Arc::new(Shared::default());
    let links = Arc::new(LinkStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(intercepts::run(
        args.intercepts.0.clone(),
        secret,
        events_rx,
        Arc::clone(&announced),
        inputs_tx.clone(),
        Arc::clone(&links),
    ));
    let worker = Worker {
        engine: Engine::new(args.engine_config()),
        tx,
        inputs: inputs_rx,
        events: events_tx,
        announced,
        shared: Arc::clone(&shared),
        stop: Arc::clone(&stop),
        grace: OFFLINE_GRACE,
    };
    let worker = std::thread::Builder::new().name("copier-worker".into()).spawn(move || worker.run())?;
    Ok(Pipeline { inputs: inputs_tx, stop, shared, links, worker })
}

/// The copier's own `name=value` counters.
fn copier_pairs(shared: &Shared, links: &LinkStats) -> Vec<(&'static str, u64)> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut pairs = shared.counters.lock().expect("not poisoned").pairs();
    let (active, buffered) = *shared.active.lock().expect("not poisoned");
    pairs.push(("active", active as u64));
    pairs.push(("buffered", buffered as u64));
    pairs.push(("tx_errors", *shared.tx_errors.lock().expect("not poisoned")));
    pairs.push(("intercepts", links.connected.load(Relaxed)));
    pairs.push(("reconnects", links.reconnects.load(Relaxed)));
    pairs.push(("facts", links.facts.load(Relaxed)));
    pairs.push(("facts_dropped", links.facts_dropped.load(Relaxed)));
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
            if ["sessions", "completed", "sent", "bytes"].contains(k) {
                s += &format!(" {k}={:.1}", v.saturating_sub(*b) as f64 / seconds.max(1e-9));
            }
        }
    }
    s
}

async fn wait_for_intercepts(p: &Pipeline, wanted: usize) {
    let deadline = Instant::now() + CONNECT_WAIT;
    while (p.links.connected.load(std::sync::atomic::Ordering::Relaxed) as usize) < wanted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = p.links.connected.load(std::sync::atomic::Ordering::Relaxed) as usize;
    if connected < wanted {
        log::warn!("connected to {connected} of {wanted} intercepts after {CONNECT_WAIT:?}; replies through the others are lost until they connect");
    }
}

/// Feeds the capture file to the worker at its recorded pace (scaled by `-a`, gaps over `-I`
/// cut); returns the file's error, if it ended early.
fn feed(mut source: PcapSource, inputs: std::sync::mpsc::SyncSender<Input>, speed: f64, skip_gap_us: Option<u64>, stop: Arc<AtomicBool>) -> Option<String> {
    let start = Instant::now();
    let (mut first, mut last, mut skipped) = (None::<u64>, 0u64, 0u64);
    let mut batch = Batch::default();
    let mut pending = Batch::default();
    let mut packets = 0u64;
    let outcome = loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break None;
        }
        let more = match source.next_batch(&mut batch) {
            Ok(more) => more,
            Err(err) => {
                // Replay what was read, then report.
                for (ts, link, p) in batch.iter() {
                    pending.push(ts, link, p);
                }
                break Some(err.to_string());
            }
        };
        for (ts, link, p) in batch.iter() {
            let base = *first.get_or_insert(ts);
            if let Some(gap) = skip_gap_us {
                if ts.saturating_sub(last) > gap && last != 0 {
                    skipped += ts - last - gap;
                }
            }
            last = ts;
            let due = Duration::from_secs_f64(ts.saturating_sub(base).saturating_sub(skipped) as f64 / 1e6 / speed);
            let now = start.elapsed();
            if due > now + Duration::from_millis(1) {
                if !pending.is_empty() {
                    let _ = inputs.send(Input::Captured(std::mem::take(&mut pending)));
                }
                std::thread::sleep(due - now);
            }
            pending.push(ts, link, p);
            packets += 1;
            if pending.len() >= copier_user::pcap::BATCH {
                let _ = inputs.send(Input::Captured(std::mem::take(&mut pending)));
            }
        }
        if !more {
            break None;
        }
    };
    if !pending.is_empty() {
        let _ = inputs.send(Input::Captured(pending));
    }
    log::info!("capture file read: {packets} packets replayed, {} records skipped (not IP)", source.skipped);
    let _ = inputs.send(Input::SourceDone);
    outcome
}

async fn run(args: Args) -> anyhow::Result<()> {
    let secret = args.secret_file.as_deref().map(xdp_runtime::read_secret).transpose()?;
    let source = match &args.input {
        Some(path) => Some(PcapSource::open(path)?),
        None => None,
    };
    let pipeline = start_pipeline(&args, secret)?;
    for m in &args.mappings.0 {
        log::info!("replaying {} to {}", m.online, m.target);
    }
    let mut online = None;
    let feeder = match source {
        Some(source) => {
            // A file's first sessions would lose their replies to an intercept not yet connected;
            // live traffic does not wait (SYN retransmission covers a late intercept).
            wait_for_intercepts(&pipeline, args.intercepts.0.len()).await;
            let (inputs, stop) = (pipeline.inputs.clone(), Arc::clone(&pipeline.stop));
            let (speed, gap) = (args.speed, args.skip_gaps_ms.map(|ms| ms * 1000));
            Some(std::thread::Builder::new().name("copier-pcap".into()).spawn(move || feed(source, inputs, speed, gap, stop))?)
        }
        None => {
            let iface = args.iface.as_deref().expect("clap requires a source");
            online = Some(online::Capture::start(iface, &args.mappings, args.force, pipeline.inputs.clone())?);
            None
        }
    };

    let interval = Duration::from_secs_f64(args.stats_interval);
    let stop_signal = xdp_runtime::stop_signal();
    tokio::pin!(stop_signal);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let (mut before, mut since) = (copier_pairs(&pipeline.shared, &pipeline.links), Instant::now());
    loop {
        tokio::select! {
            stop = &mut stop_signal => {
                log::info!("stopping: {:?}", stop?);
                pipeline.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            _ = ticker.tick() => {
                if pipeline.worker.is_finished() {
                    break;
                }
                if since.elapsed() >= interval {
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
    let xdp_totals = online.as_ref().map(|c| c.pairs()).transpose()?.unwrap_or_default();
    drop(online); // detaches the XDP program before anything else can fail
    let Pipeline { inputs, worker, shared, links, .. } = pipeline;
    drop(inputs);
    let truncated = feeder.map(|f| f.join().ok().flatten()).unwrap_or_default();
    worker.join().map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
    let mut totals = xdp_totals;
    totals.extend(copier_pairs(&shared, &links));
    println!("{}", line("summary", &totals, &[], 0.0));
    if let Some(err) = truncated {
        eprintln!("copier: warning: {err}");
    }
    Ok(())
}

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
        let i: Intercepts = "10.0.0.9,10.0.0.8:4000,[fd00::1]:5,fd00::2".parse().unwrap();
        assert_eq!(i.0[0], "10.0.0.9:36524".parse().unwrap());
        assert_eq!(i.0[1].port(), 4000);
        assert_eq!(i.0[3], "[fd00::2]:36524".parse().unwrap());
        assert!("host:1".parse::<Intercepts>().is_err());
    }

    #[test]
    fn tcpcopy_flags_reach_the_engine() {
        let args = Args::try_parse_from([
            "copier", "-x", "80-10.0.0.2:8080", "-s", "10.0.0.3", "-i", "x.pcap", "-c", "10.9.0.1-10.9.0.4", "-n", "3", "-f", "7",
            "-r", "40", "-t", "9", "-m", "2", "-W", "-O",
        ])
        .unwrap();
        let c = args.engine_config();
        assert_eq!((c.multiply, c.port_shift, c.sample_percent, c.idle_timeout_us), (3, 7, 40, 9_000_000));
        assert_eq!((c.wait_for_response, c.only_complete, c.max_buffered_bytes), (false, true, 2 << 20));
        assert_eq!(c.client_addrs.unwrap().len(), 4);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for argv in [
            &["copier", "-x", "80-10.0.0.2:8080", "-s", "10.0.0.3"][..],
            &["copier", "-x", "80", "-s", "10.0.0.3", "-i", "f"],
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
}
