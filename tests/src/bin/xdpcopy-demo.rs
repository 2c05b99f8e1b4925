//! `xdpcopy-demo` (run by `cargo xtask demo`): the deployment picture on a namespace test bed, live.
//!
//! Clients use the online nginx (short requests and keep-alive sessions) while the copier's XDP
//! program copies their packets on the online host and replays every session to the test
//! server's nginx; the test server's replies go to the assistant host, where the intercept steals
//! them and serves their facts back to the copier. Each second the demo prints requests served
//! online next to requests received by the test server, with rates.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use xdpcopy_testbed::{
    bins,
    servers::Nginx,
    stats,
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

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

/// Short GETs and 5-request keep-alive sessions from the client host until `stop`, about
/// `per_second` requests a second.
fn client_load(tb: &Testbed, server: SocketAddr, per_second: u32, stop: &AtomicBool, tally: &Tally) {
    let gap = Duration::from_secs(1) / per_second;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let outcome = if n % 10 == 9 {
            let paths: Vec<String> = (0..5).map(|i| format!("/demo/keepalive/{n}/{i}")).collect();
            tb.client.run(move || {
                traffic::http_keepalive(server, &paths).map(|s| s.iter().filter(|&&c| c == 200).count() as u64)
            })
        } else {
            let path = format!("/demo/short/{n}");
            tb.client.run(move || traffic::http_get(server, &path).map(|s| u64::from(s == 200)))
        };
        match outcome {
            Ok(Ok(ok)) => tally.ok.fetch_add(ok, Ordering::Relaxed),
            _ => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
        n += 1;
        std::thread::sleep(gap);
    }
}

fn last_stats(p: &Process) -> stats::Stats {
    stats::last(&p.stdout()).unwrap_or(stats::Stats {
        label: String::new(),
        summary: false,
        totals: Default::default(),
    })
}

fn run(duration: Duration) -> anyhow::Result<()> {
    let tb = Testbed::new()?;
    println!(
        "demo: test bed up: namespaces {}, {}, {}, {}",
        tb.client.name(),
        tb.online.name(),
        tb.target.name(),
        tb.assist().name()
    );
    let online_addr = SocketAddr::new(addr::ONLINE.into(), 80);
    let target_addr = SocketAddr::new(addr::TARGET.into(), 8080);
    let control = SocketAddr::new(addr::ASSIST_CONTROL.into(), common::proto::DEFAULT_PORT);
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_addr)?;
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_addr)?;
    println!("demo: production nginx on {online_addr}, test server nginx on {target_addr}");

    let mut intercept = tb.spawn(
        Host::Assist,
        "intercept",
        bins::xdpcopy("intercept"),
        &[
            "--allow",
            addr::CONTROL_NETS,
            "--iface",
            iface::ASSIST_TO_TARGET,
            "--target",
            &target_addr.to_string(),
            "--listen",
            &control.to_string(),
            "--stats-interval",
            "1",
        ],
    )?;
    intercept.wait_for_line(STARTUP, |l| l.contains("XDP program attached"))?;
    let mut copier = tb.spawn(
        Host::Online,
        "copier",
        bins::xdpcopy("copier"),
        &[
            "-x",
            &format!("80-{target_addr}"),
            "-s",
            &addr::ASSIST_CONTROL.to_string(),
            "--iface",
            iface::ONLINE_TO_CLIENT,
            "--stats-interval",
            "1",
        ],
    )?;
    copier.wait_for_line(STARTUP, |l| l.contains("XDP program attached"))?;
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1))?;
    println!("demo: copier on the online host (XDP copy mode), intercept on the assistant host; clients start");
    println!("demo:   t  | online served (req/s) | test server received (req/s) | copier sessions completed | intercept routed");

    let stop = AtomicBool::new(false);
    let load = Tally::default();
    std::thread::scope(|scope| {
        scope.spawn(|| client_load(&tb, online_addr, 40, &stop, &load));
        let start = Instant::now();
        let (mut online_before, mut target_before) = (0usize, 0usize);
        while start.elapsed() < duration {
            std::thread::sleep(Duration::from_secs(1));
            let (o, t) = (online.requests().len(), target.requests().len());
            let (c, i) = (last_stats(&copier), last_stats(&intercept));
            println!(
                "demo: {:>3}s | {:>6} ({:>4}) | {:>6} ({:>4}) | {:>6} {:>6} | {:>6}",
                start.elapsed().as_secs(),
                o,
                o - online_before,
                t,
                t - target_before,
                c.get("sessions"),
                c.get("completed"),
                i.get("routed"),
            );
            (online_before, target_before) = (o, t);
        }
        stop.store(true, Ordering::Relaxed);
    });

    // Let the last sessions finish, then stop both binaries.
    let deadline = Instant::now() + Duration::from_secs(5);
    while target.requests().len() < online.requests().len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in [&mut copier, &mut intercept] {
        p.signal(libc::SIGINT)?;
        let status = p.wait_timeout(Duration::from_secs(15))?;
        if !status.success() {
            bail!("a binary failed ({status})\n{}", p.describe());
        }
        let out = p.stdout();
        let summary = out.lines().rev().find(|l| l.contains(" summary: ")).map(str::to_owned);
        println!("demo: {}", summary.context("no summary line")?);
        for target in out.lines().filter(|l| l.starts_with("copier target ")) {
            println!("demo: {target}");
        }
    }
    let left = [(&tb.online, iface::ONLINE_TO_CLIENT), (tb.assist(), iface::ASSIST_TO_TARGET)]
        .into_iter()
        .filter_map(|(ns, i)| ns.xdp_program(i).ok().flatten().map(|id| format!("{}/{i} (id {id})", ns.name())))
        .collect::<Vec<_>>();
    if !left.is_empty() {
        bail!("XDP programs still attached after SIGINT: {}", left.join(", "));
    }
    let (served, received) = (online.requests().len(), target.requests().len());
    println!(
        "demo: clients got {} answers ({} failures); production served {served} requests, the test server received {received} ({:.1} %)",
        load.ok(),
        load.failed(),
        100.0 * received as f64 / served.max(1) as f64
    );
    println!("demo: both XDP programs detached; tearing the test bed down");
    Ok(())
}

#[derive(Parser)]
#[command(name = "xdpcopy-demo", about = "Production and test server side by side on a namespace test bed (root)")]
struct Cli {
    /// How long the clients send traffic.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    xdpcopy_testbed::require_root();
    match run(Duration::from_secs(cli.seconds)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
