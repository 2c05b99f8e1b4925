//! `intercept`: steals the test server's replies, on the assistant host (XDP) or on the test
//! host itself (`--on-target`, TC egress), and serves their header facts to the copiers
//! (docs/architecture.md §1, §3).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap, XskMap},
    programs::Xdp,
};
use clap::Parser;
use common::{
    counters::InterceptCounter,
    endpoint::Endpoint,
    maps::{CAPTURE, MAX_OWNED_CLIENTS, MAX_QUEUES, OWNED_CLIENTS, TARGET_ENDPOINTS, XSKS},
    proto::DEFAULT_PORT,
};
use intercept_core::{filter::parse_filter, stealing::Stealing};
use intercept_user::{
    on_target::{self, OwnedMap},
    server::{self, Routes, SharedRoutes},
    stats::Stats,
    xsk,
};
use ipnet::IpNet;
use xdp_runtime::{coalesce::Coalesce, counters::Counters, Attached};

/// The eBPF object built from `intercept-ebpf` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/intercept"));

#[derive(Debug, Parser)]
#[command(
    name = "intercept",
    version,
    about = "Steal a test server's replies (XDP + AF_XDP) and serve their header facts to copiers."
)]
#[command(group(clap::ArgGroup::new("targets").required(true).multiple(true).args(["target", "filter"])))]
struct Args {
    /// The interface the test server's replies arrive on; with --on-target, the test host's
    /// interface they leave by.
    #[arg(short = 'i', long)]
    iface: String,
    /// Run on the test host itself, with no assistant host and no route: the replies to client
    /// endpoints a connected copier owns are stolen as they leave --iface (TC egress); all other
    /// traffic leaves untouched.
    #[arg(long, conflicts_with_all = ["workers", "force"])]
    on_target: bool,
    /// Test-server endpoints whose replies to steal: IP:PORT[,IP:PORT...]
    #[arg(long, value_delimiter = ',')]
    target: Vec<SocketAddr>,
    /// tcpcopy's filter form: 'tcp and src port N [and src host IP]'.
    #[arg(short = 'F', long = "filter")]
    filter: Option<String>,
    /// Where copiers connect. The default, `[::]`, takes IPv4 and IPv6 copiers alike.
    #[arg(long, default_value_t = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_PORT)))]
    listen: SocketAddr,
    /// A file holding the secret copiers must prove they know (and that this intercept proves
    /// to them). Required, unless --allow-unauthenticated or --allow is given.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Serve copiers without a secret: anyone who reaches --listen can claim client endpoints
    /// that no copier owns yet. For trusted test networks only.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Copiers' networks, CIDR[,CIDR...]: connections from elsewhere are refused. Without a
    /// secret, only these may connect.
    #[arg(long, value_delimiter = ',')]
    allow: Vec<IpNet>,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// How log records are written (standard error).
    #[arg(long, value_enum, default_value_t)]
    log_format: xdp_runtime::logging::LogFormat,
    /// Copier connections at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_copiers: u32,
    /// Seconds a copier may send nothing before its connection is closed (copiers ping every
    /// few seconds).
    #[arg(long, default_value_t = 30.0, value_parser = xdp_runtime::positive_seconds)]
    idle_timeout: f64,
    /// RX queues to serve, one pinned worker each (default: all of the interface's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_QUEUES as i64))]
    workers: Option<u32>,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 5.0, value_parser = xdp_runtime::positive_seconds)]
    stats_interval: f64,
    /// Replace an XDP program this process did not attach.
    #[arg(long)]
    force: bool,
    /// Microseconds an AF_XDP worker pauses after a batch that did not fill, so replies travel
    /// to the copiers in fewer, larger messages (a NIC's interrupt moderation); 0: never.
    /// Each reply may wait this long; a full batch never waits.
    #[arg(long, default_value_t = xsk::DEFAULT_COALESCE_US, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    coalesce_us: u32,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    xdp_runtime::logging::init(args.log_format);
    let targets = match targets(&args) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("intercept: error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.secret_file.is_none() && !args.allow_unauthenticated && args.allow.is_empty() {
        eprintln!(
            "intercept: error: no --secret-file: copiers must authenticate, or anyone reaching {} could claim \
             client endpoints (--allow CIDR,... restricts who may connect; --allow-unauthenticated serves anyone)",
            args.listen
        );
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run(args, targets))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The chain of causes, not a backtrace: users act on the message.
            eprintln!("intercept: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The endpoints from `--target` and `-F`: a bad filter is a usage error.
fn targets(args: &Args) -> anyhow::Result<Vec<Endpoint>> {
    let mut targets: Vec<Endpoint> = args.target.iter().map(|&t| t.into()).collect();
    if let Some(filter) = &args.filter {
        targets.push(parse_filter(filter)?);
    }
    Ok(targets)
}

/// A listener on `addr`; on the IPv6 wildcard it takes IPv4 connections too, whatever the
/// host's `net.ipv6.bindv6only` says.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

async fn run(args: Args, targets: Vec<Endpoint>) -> anyhow::Result<()> {
    use xdp_runtime::caps::Cap;
    xdp_runtime::caps::require(&[Cap::Bpf, Cap::Perfmon, Cap::NetAdmin, Cap::NetRaw, Cap::IpcLock], "intercept")?;
    let secret = args.secret_file.as_deref().map(xdp_runtime::read_secret).transpose()?;
    let listener = listen(args.listen).with_context(|| format!("listening for copiers on {}", args.listen))?;

    // The owned-clients map serves the egress program only; on an assistant host the ring
    // takes only jumbo replies (several buffers), and is smaller.
    let sizes: &[(&str, u32)] = if args.on_target { &[] } else { &[(CAPTURE, XDP_RING_BYTES), (OWNED_CLIENTS, 1)] };
    let mut ebpf = xdp_runtime::load_with(EBPF_OBJECT, &[], sizes)?;
    xdp_runtime::forward_logs(&mut ebpf)?;
    {
        let map = ebpf.map_mut(TARGET_ENDPOINTS).context("eBPF object has no target endpoint map")?;
        let mut map: HashMap<_, Endpoint, u8> = HashMap::try_from(map)?;
        for t in &targets {
            map.insert(t, 1, 0).with_context(|| format!("adding target {t}"))?;
            log::info!("intercepting replies from {t}");
        }
    }
    let counters = Arc::new(Counters::<InterceptCounter>::take(&mut ebpf)?);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cores = xdp_runtime::allowed_cores();
    let mut threads = Vec::new();
    let routes: SharedRoutes = if args.on_target {
        let owned = Box::new(OwnedMap::take(&mut ebpf)?);
        let capacity = MAX_OWNED_CLIENTS as usize;
        Arc::new(Mutex::new(Routes::stealing(Stealing::new(owned, capacity), capacity)))
    } else {
        SharedRoutes::default()
    };
    // The ring's reader: every reply on the test host, the jumbo ones on an assistant host.
    let coalesce = Coalesce::from_micros(args.coalesce_us, xdp_runtime::xsk_rx::BATCH);
    threads.push(on_target::spawn_reader(
        &mut ebpf,
        cores[0],
        coalesce,
        Arc::clone(&routes),
        Arc::clone(&stop),
        Arc::clone(&stats),
    )?);
    if args.on_target {
        on_target::attach(&mut ebpf, &args.iface)?;
        log::info!(
            "TC egress program attached to {} (tcx link: detached when this process exits): replies to the \
             clients that copiers own are stolen as they leave",
            args.iface
        );
        let expiring = Arc::clone(&routes);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                Routes::lock(&expiring).expire();
            }
        });
    } else {
        attach_xdp(&args, &mut ebpf, &routes, &stats, &stop, &cores, &mut threads)?;
    }

    if let Some(addr) = args.metrics {
        let (counters, stats) = (Arc::clone(&counters), Arc::clone(&stats));
        let source = Arc::new(move || {
            use common::counters::Counter as _;
            let mut s = xdp_runtime::metrics::Snapshot::default();
            let xdp = counters.read().unwrap_or_default();
            let pairs: Vec<_> =
                InterceptCounter::ALL.iter().map(|c| c.name()).zip(xdp).chain(stats.snapshot()).collect();
            s.pairs(&pairs, &["copiers", "connections"], help);
            s
        });
        xdp_runtime::metrics::serve(addr, "xdpcopy_intercept", source)?;
    }
    log::info!("serving copiers on {}{}", args.listen, if secret.is_some() { " (secret required)" } else { "" });
    // On the test host, replies leave by its own route whatever it forwards.
    let forwarding = !args.on_target && forwards_ip();
    if forwarding {
        log::warn!(
            "this host forwards IP: replies the intercept does not steal (other ports, or all of them once it stops) \
             go on towards the real clients; turn it off (net.ipv4.ip_forward=0, net.ipv6.conf.all.forwarding=0)"
        );
    }
    let access = server::Access { secret, allow: args.allow.clone(), forwarding };
    let limits = server::Limits {
        max_copiers: args.max_copiers as usize,
        idle_timeout: Duration::from_secs_f64(args.idle_timeout),
    };
    tokio::spawn(server::serve(listener, access, limits, Arc::clone(&routes), Arc::clone(&stats)));

    let report =
        xdp_runtime::report_until_stopped("intercept", &counters, Duration::from_secs_f64(args.stats_interval), || {
            stats.snapshot()
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(ebpf);
    let stop = report?;
    let what = if args.on_target { "TC egress" } else { "XDP" };
    log::info!("stopped by {stop:?}; {what} program detached from {}", args.iface);
    Ok(())
}

/// The capture ring's size on an assistant host: 450 jumbo replies, where AF_XDP takes the rest.
const XDP_RING_BYTES: u32 = 4 << 20;

/// The assistant host's receive path: an AF_XDP socket and pinned worker per RX queue, then
/// the XDP program that redirects the replies into them.
fn attach_xdp(
    args: &Args,
    ebpf: &mut aya::Ebpf,
    routes: &SharedRoutes,
    stats: &Arc<Stats>,
    stop: &Arc<AtomicBool>,
    cores: &[usize],
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> anyhow::Result<()> {
    // Sockets first, so that no reply arrives before its queue has one.
    let queues = xdp_runtime::xsk_rx::rx_queue_count(&args.iface);
    let workers = args.workers.unwrap_or(queues.min(MAX_QUEUES));
    if workers > queues {
        bail!("--workers {workers}: {} has only {queues} RX queue(s)", args.iface);
    }
    let mut xsks: XskMap<_> = XskMap::try_from(ebpf.map_mut(XSKS).context("eBPF object has no XSK map")?)?;
    for queue in 0..workers {
        let socket = xdp_runtime::xsk_rx::RxSocket::open(&args.iface, queue)?;
        xsks.set(queue, socket.fd(), 0).with_context(|| format!("registering the AF_XDP socket of queue {queue}"))?;
        log::info!(
            "AF_XDP socket on {} queue {queue} ({})",
            args.iface,
            if socket.zero_copy { "zero-copy" } else { "copy mode" }
        );
        let coalesce = Coalesce::from_micros(args.coalesce_us, xdp_runtime::xsk_rx::BATCH);
        threads.push(xsk::spawn_worker(
            socket,
            cores[queue as usize % cores.len()],
            coalesce,
            Arc::clone(routes),
            Arc::clone(stop),
            Arc::clone(stats),
        )?);
    }

    let program: &mut Xdp =
        ebpf.program_mut("intercept").context("eBPF object has no intercept program")?.try_into()?;
    program.load().context("loading the intercept XDP program (verifier)")?;
    match xdp_runtime::attach(program, &args.iface, args.force)? {
        Attached::Link => {
            log::info!("XDP program attached to {} (bpf_link: detached when this process exits)", args.iface)
        }
        Attached::Netlink => log::warn!(
            "XDP program attached to {} through netlink (no bpf_link support): it is detached on \
             SIGINT/SIGTERM, but not if this process is killed",
            args.iface
        ),
    }
    Ok(())
}

/// Whether this network namespace forwards IPv4 or IPv6.
fn forwards_ip() -> bool {
    ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|v| v.trim() != "0"))
}

/// The metrics' descriptions.
fn help(name: &str) -> &'static str {
    match name {
        "seen" => "Frames the XDP program ran for",
        "matched" => "TCP segments sent by a test-server endpoint",
        "redirected" => "Frames redirected into an AF_XDP socket",
        "no_socket" => "Matching frames on a queue without an AF_XDP socket, passed to the kernel",
        "passed" => "Frames handed on to the kernel",
        "malformed" => "Frames that claimed IP/TCP but did not parse",
        "stolen" => "Replies taken through the ring: on the test host all, on an assistant host the jumbo ones",
        "lost" => "Stolen replies not copied to userspace (the ring was full)",
        "truncated" => "Stolen replies longer than a ring record (GSO packets), payload cut",
        "replies" => "Replies reduced to facts",
        "unparsed" => "Frames in the AF_XDP rings that did not parse as TCP",
        "routed" => "Facts sent to their copier",
        "unowned" => "Facts no copier owns, dropped",
        "held_early" => "SYN-ACKs that came before the OWN of their client, held for it",
        "slow_copier_dropped" => "Facts dropped because their copier's buffer was full",
        "copiers" => "Copiers connected now",
        "rejected" => "Connections closed for a protocol error, a wrong version or secret, a refused claim",
        "connections" => "Connections open now, handshakes included",
        "refused" => "Connections refused at once: too many, or outside --allow",
        "idle_closed" => "Connections closed for sending nothing for --idle-timeout",
        "claims_refused" => "Announcements refused: taken endpoints or limits",
        "payload_sent" => "Reply payload bytes sent to copiers that want them",
        "payload_cut" => "Reply payload bytes past the first --payload-bytes of their answer, not sent",
        _ => "See the README's stats section",
    }
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
    fn targets_come_from_target_and_tcpcopy_filters() {
        let args = Args::try_parse_from(["intercept", "-i", "eth1", "--target", "10.0.0.2:8080,10.0.0.3:80"]).unwrap();
        assert_eq!(targets(&args).unwrap().len(), 2);
        let args = Args::try_parse_from(["intercept", "-i", "eth1", "-F", "tcp and src port 8080"]).unwrap();
        assert_eq!(targets(&args).unwrap(), [Endpoint::any(8080)]);
        let args = Args::try_parse_from(["intercept", "-i", "eth1", "-F", "udp"]).unwrap();
        assert!(targets(&args).is_err());
    }

    #[test]
    fn a_target_is_required_and_bad_flags_are_usage_errors() {
        for argv in [
            &["intercept", "-i", "eth1"][..],
            &["intercept", "-i", "eth1", "--target", "10.0.0.2"],
            &["intercept", "-i", "eth1", "--target", "10.0.0.2:80", "--workers", "0"],
            &["intercept", "-i", "eth1", "--target", "10.0.0.2:80", "--stats-interval", "-1"],
        ] {
            let err = Args::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    /// An Ethernet/IPv4/TCP SYN-ACK from 10.100.2.2:8080 to 10.100.1.2:40000.
    fn syn_ack_frame() -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 100, 2, 2, 10, 100, 1, 2]);
        f.extend_from_slice(&[0x1f, 0x90, 0x9c, 0x40, 0, 0, 0, 9, 0, 0, 0, 1, 0x50, 0x12, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    /// The intercept's XDP program, loaded, with 10.100.2.2:8080 as its target (needs root).
    fn loaded_program() -> (aya::Ebpf, Counters<InterceptCounter>) {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "loading the intercept's XDP program needs root");
        let sizes = [(CAPTURE, XDP_RING_BYTES), (OWNED_CLIENTS, 1)];
        let mut ebpf = xdp_runtime::load_with(EBPF_OBJECT, &[], &sizes).unwrap();
        let mut targets: HashMap<_, Endpoint, u8> = HashMap::try_from(ebpf.map_mut(TARGET_ENDPOINTS).unwrap()).unwrap();
        targets.insert(Endpoint::v4([10, 100, 2, 2], 8080), 1, 0).unwrap();
        let counters = Counters::<InterceptCounter>::take(&mut ebpf).unwrap();
        let program: &mut Xdp = ebpf.program_mut("intercept").unwrap().try_into().unwrap();
        program.load().unwrap();
        (ebpf, counters)
    }

    #[test]
    fn a_reply_on_a_queue_without_a_socket_reaches_the_kernel_as_it_came() {
        use common::counters::Counter as _;
        use std::os::fd::AsFd as _;
        let (ebpf, counters) = loaded_program();
        let program: &Xdp = ebpf.program("intercept").unwrap().try_into().unwrap();
        let frame = syn_ack_frame();
        let (verdict, out) = xdp_runtime::bpf::test_run_xdp(program.fd().unwrap().as_fd(), &frame).unwrap();
        const XDP_PASS: u32 = 2;
        assert_eq!(verdict, XDP_PASS, "no socket on the queue: the kernel's");
        assert_eq!(out, frame, "the arrival stamp over its MAC is undone");
        let counted: Vec<(&str, u64)> =
            InterceptCounter::ALL.iter().map(|c| c.name()).zip(counters.read().unwrap()).collect();
        assert!(counted.contains(&("no_socket", 1)) && counted.contains(&("matched", 1)), "{counted:?}");
    }
}
