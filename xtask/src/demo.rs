//! `cargo xtask demo`: the deployment picture on a namespace test bed, live.
//!
//! Clients send HTTP requests to the online nginx while the copier's XDP program watches the
//! online interface. The copier does not replay sessions yet, so the demo sends SYNs from client
//! addresses to the test server from the online host, as the copier will; the intercept steals
//! the test server's SYN-ACKs on the assistant host and serves their facts to a protocol client
//! standing in for the copier. The demo says so.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use xdpcopy_testbed::{
    bins,
    proto_client::ProtoClient,
    raw,
    servers::Nginx,
    stats,
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

fn latest(p: &Process) -> String {
    stats::last(&p.stdout())
        .map(|s| s.totals.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "(no stats yet)".into())
}

/// Responses counted by a load loop.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Sends SYNs from client addresses to the test server from the online host until `stop`, about
/// `per_second` a second, as the copier will open replayed sessions.
fn syn_load(tb: &Testbed, target: SocketAddr, per_second: u32, stop: &AtomicBool, tally: &Tally) {
    let gap = Duration::from_secs(1) / per_second;
    let mut port = 20000u16;
    while !stop.load(Ordering::Relaxed) {
        let syn = raw::ipv4_tcp((addr::CLIENT, port), (addr::TARGET, target.port()), 1, 0, common::tcp::flags::SYN, &[], &[]);
        match tb.online.run(move || raw::send_ipv4(&syn)) {
            Ok(Ok(())) => tally.ok.fetch_add(1, Ordering::Relaxed),
            _ => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
        port = port.wrapping_add(1).max(20000);
        std::thread::sleep(gap);
    }
}

/// Sends GETs to `server` from inside `host` until `stop`, about `per_second` a second.
fn http_load(tb: &Testbed, host: Host, server: SocketAddr, prefix: &'static str, per_second: u32, stop: &AtomicBool, tally: &Tally) {
    let gap = Duration::from_secs(1) / per_second;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let path = format!("/{prefix}/{n}");
        match tb.host(host).run(move || traffic::http_get(server, &path)) {
            Ok(Ok(200)) => tally.ok.fetch_add(1, Ordering::Relaxed),
            _ => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
        n += 1;
        std::thread::sleep(gap);
    }
}

pub fn run(duration: Duration) -> anyhow::Result<()> {
    let tb = Testbed::new()?;
    println!("demo: test bed up: namespaces {}, {}, {}, {}", tb.client.name(), tb.online.name(), tb.target.name(), tb.assist.name());
    let online_addr = SocketAddr::new(addr::ONLINE.into(), 80);
    let target_addr = SocketAddr::new(addr::TARGET.into(), 8080);
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_addr)?;
    let _target = Nginx::start(&tb, Host::Target, "target-nginx", target_addr)?;
    println!("demo: online nginx on {online_addr}, test server nginx on {target_addr}");

    let mapping = format!("80-{target_addr}");
    let mut copier = tb.spawn(Host::Online, "copier", bins::xdpcopy("copier"), &["-x", &mapping, "--iface", iface::ONLINE_TO_CLIENT, "--stats-interval", "1"])?;
    let target = target_addr.to_string();
    let control = SocketAddr::new(addr::ASSIST_CONTROL.into(), common::proto::DEFAULT_PORT);
    let listen = control.to_string();
    let mut intercept = tb.spawn(
        Host::Assist,
        "intercept",
        bins::xdpcopy("intercept"),
        &["--iface", iface::ASSIST_TO_TARGET, "--target", &target, "--listen", &listen, "--stats-interval", "1"],
    )?;
    for p in [&mut copier, &mut intercept] {
        let line = p.wait_for_line(STARTUP, |l| l.contains("XDP program attached"))?;
        println!("demo: {}", line.split("] ").last().unwrap_or(&line));
    }

    intercept.wait_for_line(STARTUP, |l| l.contains("serving copiers"))?;
    // Stands in for a copier: owns every port of the client address.
    let mut standin = ProtoClient::connect(&tb.online, control, b"")?;
    standin.own(&[common::endpoint::Endpoint::v4(addr::CLIENT.octets(), 0)])?;
    println!("demo: clients → online nginx for {duration:?}; meanwhile SYNs from client addresses → test server (a stand-in for replayed sessions), whose SYN-ACKs the intercept steals for a stand-in copier");
    let stop = AtomicBool::new(false);
    let (online_load, syns) = (Tally::default(), Tally::default());
    let facts = std::thread::scope(|scope| {
        scope.spawn(|| http_load(&tb, Host::Client, online_addr, "demo", 50, &stop, &online_load));
        scope.spawn(|| syn_load(&tb, target_addr, 5, &stop, &syns));
        let reader = scope.spawn(|| standin.facts_for(duration + Duration::from_millis(500)).map(|f| f.len()));
        let start = Instant::now();
        while start.elapsed() < duration {
            std::thread::sleep(Duration::from_secs(1));
            println!(
                "demo: t={:>2}s  online served {:>5}  | copier: {}  | intercept: {}",
                start.elapsed().as_secs(),
                online_load.ok(),
                latest(&copier),
                latest(&intercept)
            );
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader thread")
    })?;

    for p in [&mut copier, &mut intercept] {
        p.signal(libc::SIGINT)?;
        let status = p.wait_timeout(Duration::from_secs(10))?;
        if !status.success() {
            bail!("a binary failed ({status})\n{}", p.describe());
        }
        let summary = p.stdout().lines().rev().find(|l| l.contains(" summary: ")).map(str::to_owned);
        println!("demo: {}", summary.context("no summary line")?);
    }
    let left = [(&tb.online, iface::ONLINE_TO_CLIENT), (&tb.assist, iface::ASSIST_TO_TARGET)]
        .into_iter()
        .filter_map(|(ns, i)| ns.xdp_program(i).ok().flatten().map(|id| format!("{}/{i} (id {id})", ns.name())))
        .collect::<Vec<_>>();
    if !left.is_empty() {
        bail!("XDP programs still attached after SIGINT: {}", left.join(", "));
    }
    println!(
        "demo: clients got {} responses ({} failed), nginx logged {} requests; {} SYNs sent, the stand-in copier received {facts} SYN-ACK facts (retransmissions included)",
        online_load.ok(),
        online_load.failed(),
        online.requests().len(),
        syns.ok(),
    );
    println!("demo: both XDP programs detached; tearing the test bed down");
    Ok(())
}
