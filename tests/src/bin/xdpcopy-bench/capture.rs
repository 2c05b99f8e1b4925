//! Capture path: the generator floods the online host's client-facing interface with minimal
//! online-port TCP frames at stepped rates. Each step runs twice on a fresh test bed: once with
//! a bare `XDP_PASS` program (the most a production interface carries with any XDP program),
//! once under the copier in copy mode; the interface receives in a NAPI thread of its own.
//! Production keeps being probed with real HTTP requests throughout. At the fastest step the
//! copier also runs in mirror mode (AF_XDP receive), and the generator's two transmit paths,
//! AF_XDP and raw IP sockets, race into a bare `XDP_DROP`. The CPU the copier and the NAPI
//! thread spend gives frames per core: on two vCPUs shared with the generator, rates alone
//! mostly show how the cores were shared.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use xdpcopy_testbed::{
    bare_xdp::{Action, BareXdp},
    bins,
    flood::{self, Flooded, Path},
    servers::Nginx,
    stats::{self, Stats},
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

use crate::{napi_cpu_us, process_cpu_us, start_intercept, svg, STARTUP};

/// Production probes per step (one HTTP GET each, on its own connection).
const PROBES: u32 = 10;

/// The offered rates, frames per second; `None` is as fast as the generator goes.
pub const RATES: [Option<u64>; 7] =
    [Some(50_000), Some(100_000), Some(200_000), Some(300_000), Some(500_000), Some(700_000), None];

/// One rate step.
#[derive(Clone, Debug)]
pub struct Step {
    pub requested: Option<u64>,
    /// Bare `XDP_PASS`: what the generator sent, and what reached the kernel's IP layer.
    pub baseline: Flooded,
    pub baseline_ip_received: u64,
    /// CPU of the interface's NAPI thread (XDP and the stack's receive path).
    pub baseline_napi: Cpu,
    /// Under the copier (copy mode).
    pub copier: Flooded,
    pub copier_ip_received: u64,
    /// The copier's summary: XDP counters and what its workers were shown.
    pub copier_stats: Stats,
    /// Production probes answered (of [`PROBES`]) while the copier ran.
    pub probes_answered: u32,
    pub copier_cpu: Cpu,
    pub copier_napi: Cpu,
}

/// CPU time spent while a flood ran (and its backlog drained), microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu(pub u64);

impl Cpu {
    /// Frames per CPU-second: what one core would carry at this cost.
    pub fn per_core(frames: u64, spent: &[Cpu]) -> f64 {
        frames as f64 / (spent.iter().map(|c| c.0).sum::<u64>().max(1) as f64 / 1e6)
    }
}

impl Step {
    pub fn baseline_pps(&self) -> f64 {
        self.baseline_ip_received as f64 / self.baseline.seconds.max(1e-9)
    }
    /// Records the copier's workers processed per second.
    pub fn processed_pps(&self) -> f64 {
        self.copier_stats.get("captured") as f64 / self.copier.seconds.max(1e-9)
    }
    /// Frames offered to the copier that its workers never saw (before XDP, ring full, queue full).
    pub fn lost(&self) -> u64 {
        self.copier.sent.saturating_sub(self.copier_stats.get("captured"))
    }
    /// Of those, lost before any XDP program ran: the interface's receive path fell behind
    /// (the bare program's run loses frames the same way).
    pub fn lost_before_xdp(&self) -> u64 {
        self.copier.sent.saturating_sub(self.copier_stats.get("seen"))
    }
    /// Of those, dropped by the copier itself: its ring or its worker queues were full.
    pub fn copier_dropped(&self) -> u64 {
        self.copier_stats.get("ring_full") + self.copier_stats.get("queue_full")
    }
    pub fn loss_pct(&self) -> f64 {
        pct(self.lost(), self.copier.sent)
    }
    pub fn baseline_loss_pct(&self) -> f64 {
        pct(self.baseline.sent.saturating_sub(self.baseline_ip_received), self.baseline.sent)
    }
    /// Copy mode per core: (the copier alone, the copier with the kernel's receive path), and
    /// the bare program's receive path alone.
    pub fn per_core(&self) -> (f64, f64, f64) {
        let frames = self.copier_stats.get("captured");
        (
            Cpu::per_core(frames, &[self.copier_cpu]),
            Cpu::per_core(frames, &[self.copier_cpu, self.copier_napi]),
            Cpu::per_core(self.baseline_ip_received, &[self.baseline_napi]),
        )
    }
}

/// The fastest step's extras.
#[derive(Clone, Debug)]
pub struct Extras {
    /// Mirror mode: offered, and the copier's summary (redirected, captured).
    pub mirror: Flooded,
    pub mirror_stats: Stats,
    pub mirror_cpu: Cpu,
    pub mirror_napi: Cpu,
    /// Unpaced transmit into a bare `XDP_DROP`, per path: what the generator handed over, and
    /// what arrived (the drop program's count: a path's "sent" includes what veth dropped).
    pub tx_af_xdp: Flooded,
    pub tx_af_xdp_arrived: u64,
    pub tx_raw: Flooded,
    pub tx_raw_arrived: u64,
}

impl Extras {
    pub fn mirror_pps(&self) -> f64 {
        self.mirror_stats.get("captured") as f64 / self.mirror.seconds.max(1e-9)
    }
    /// Mirror mode per core: (the copier alone, the copier with the kernel's receive path).
    pub fn mirror_per_core(&self) -> (f64, f64) {
        let frames = self.mirror_stats.get("captured");
        (Cpu::per_core(frames, &[self.mirror_cpu]), Cpu::per_core(frames, &[self.mirror_cpu, self.mirror_napi]))
    }
    pub fn af_xdp_arrived_pps(&self) -> f64 {
        self.tx_af_xdp_arrived as f64 / self.tx_af_xdp.seconds.max(1e-9)
    }
    pub fn raw_arrived_pps(&self) -> f64 {
        self.tx_raw_arrived as f64 / self.tx_raw.seconds.max(1e-9)
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn online_http() -> SocketAddr {
    SocketAddr::new(addr::ONLINE.into(), 80)
}

/// The online host's IP layer: datagrams received.
const IP_RECEIVED: &str = "IpInReceives";

/// Floods from the client host, probing production alongside; returns the flood and the
/// probes answered.
fn flood_with_probes(tb: &Testbed, path: Path, rate: Option<u64>, seconds: f64) -> anyhow::Result<(Flooded, u32)> {
    let duration = Duration::from_secs_f64(seconds);
    tb.client.run(move || -> anyhow::Result<(Flooded, u32)> {
        // Spawned from a thread inside the namespace, so inside it too.
        let probes = std::thread::spawn(move || {
            let gap = duration / PROBES;
            (0..PROBES)
                .filter(|i| {
                    std::thread::sleep(gap / 2);
                    let ok = traffic::http_get(online_http(), &format!("/probe/{i}")).is_ok_and(|s| s == 200);
                    std::thread::sleep(gap / 2);
                    ok
                })
                .count() as u32
        });
        let frames = flood::resets(addr::CLIENT, (addr::ONLINE, 80));
        let flooded = flood::flood(path, iface::CLIENT_TO_ONLINE, &frames, rate, duration)?;
        let answered = probes.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
        Ok((flooded, answered))
    })?
}

/// CPU spent by the copier and by the online interface's NAPI thread while `f` ran and for
/// [`DRAIN`] after it, so what was queued is counted with the work it caused.
fn measure_cpu<T>(copier: &Process, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Cpu, Cpu)> {
    let (copier_before, napi_before) = (process_cpu_us(copier.pid())?.0, napi_cpu_us(iface::ONLINE_TO_CLIENT)?);
    let out = f()?;
    std::thread::sleep(DRAIN);
    let (copier_after, napi_after) = (process_cpu_us(copier.pid())?.0, napi_cpu_us(iface::ONLINE_TO_CLIENT)?);
    Ok((out, Cpu(copier_after - copier_before), Cpu(napi_after - napi_before)))
}

/// How long the copier gets to drain its ring and queues after a flood.
const DRAIN: Duration = Duration::from_millis(500);

fn start_copier(tb: &Testbed, mode: &str) -> anyhow::Result<Process> {
    let target = SocketAddr::new(addr::TARGET.into(), 8080);
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args([
        "-x",
        &format!("80-{target}"),
        "-s",
        &addr::ASSIST_CONTROL.to_string(),
        "--iface",
        iface::ONLINE_TO_CLIENT,
    ])
    .args(["--mode", mode, "--stats-interval", "60"]);
    let mut copier = tb.start("copier", cmd)?;
    copier.wait_for_line(STARTUP, |l| l.contains("XDP program attached"))?;
    Ok(copier)
}

/// Stops the copier (drained by [`measure_cpu`]) and returns its summary.
fn stop_copier(mut copier: Process) -> anyhow::Result<Stats> {
    copier.signal(libc::SIGINT)?;
    let status = copier.wait_timeout(Duration::from_secs(30))?;
    if !status.success() {
        bail!("the copier failed ({status})\n{}", copier.describe());
    }
    stats::last(&copier.stdout())
        .filter(|s| s.summary)
        .with_context(|| format!("no copier summary\n{}", copier.describe()))
}

/// Moves the online interface's receive path (the XDP program, the stack) into a NAPI thread of
/// its own, as a NIC's runs on its own core: left inline, veth runs it inside the generator's
/// transmit calls on the generator's core, and the generator's speed caps the receiver's.
/// Called once an XDP program is attached, which gives veth its NAPI instance (GRO stays off,
/// as the step's figures have always been measured).
fn receive_in_napi_thread(tb: &Testbed) -> anyhow::Result<()> {
    tb.napi_threaded(Host::Online, iface::ONLINE_TO_CLIENT)
}

/// Production, the test server and the intercept, running while this lives.
struct Servers {
    _online: Nginx,
    _test: Nginx,
    _intercept: Process,
}

/// A test bed with production, the test server and the intercept running.
fn testbed() -> anyhow::Result<(Testbed, Servers)> {
    let tb = Testbed::new()?;
    let target = SocketAddr::new(addr::TARGET.into(), 8080);
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_http())?;
    let test = Nginx::start(&tb, Host::Target, "target-nginx", target)?;
    let intercept = start_intercept(&tb, target)?;
    Ok((tb, Servers { _online: online, _test: test, _intercept: intercept }))
}

/// Runs one rate step.
pub fn step(rate: Option<u64>, seconds: f64) -> anyhow::Result<Step> {
    let (tb, _servers) = testbed()?;
    let before = tb.online.nstat(IP_RECEIVED)?;
    let bare = BareXdp::attach(&tb.online, iface::ONLINE_TO_CLIENT, Action::Pass)?;
    receive_in_napi_thread(&tb)?;
    let napi_before = napi_cpu_us(iface::ONLINE_TO_CLIENT)?;
    let (baseline, _) = flood_with_probes(&tb, Path::AfXdp, rate, seconds)?;
    // What the stack still had queued arrives within a moment.
    std::thread::sleep(DRAIN);
    let baseline_napi = Cpu(napi_cpu_us(iface::ONLINE_TO_CLIENT)? - napi_before);
    let baseline_ip_received = tb.online.nstat(IP_RECEIVED)? - before;
    drop(bare);

    let copier = start_copier(&tb, "copy")?;
    receive_in_napi_thread(&tb)?;
    let before = tb.online.nstat(IP_RECEIVED)?;
    let ((flooded, probes_answered), copier_cpu, copier_napi) =
        measure_cpu(&copier, || flood_with_probes(&tb, Path::AfXdp, rate, seconds))?;
    let copier_stats = stop_copier(copier)?;
    let copier_ip_received = tb.online.nstat(IP_RECEIVED)? - before;
    Ok(Step {
        requested: rate,
        baseline,
        baseline_ip_received,
        baseline_napi,
        copier: flooded,
        copier_ip_received,
        copier_stats,
        probes_answered,
        copier_cpu,
        copier_napi,
    })
}

/// Frames XDP programs dropped on the online host's client-facing interface (veth's
/// `rx_queue_N_xdp_drops`, summed).
fn xdp_drops(tb: &Testbed) -> anyhow::Result<u64> {
    let out = tb
        .command(Host::Online, "ethtool")
        .args(["-S", iface::ONLINE_TO_CLIENT])
        .output()
        .context("running ethtool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .split_once(": ")
                .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
                .and_then(|(_, v)| v.parse().ok())
        })
        .collect();
    anyhow::ensure!(!counts.is_empty(), "no rx_queue_*_xdp_drops in ethtool's statistics: {text}");
    Ok(counts.iter().sum())
}

/// Mirror-mode receive and the two transmit paths, unpaced.
pub fn extras(seconds: f64) -> anyhow::Result<Extras> {
    let (tb, _servers) = testbed()?;
    let copier = start_copier(&tb, "mirror")?;
    receive_in_napi_thread(&tb)?;
    let ((mirror, _), mirror_cpu, mirror_napi) =
        measure_cpu(&copier, || flood_with_probes(&tb, Path::AfXdp, None, seconds))?;
    let mirror_stats = stop_copier(copier)?;
    let _drop = BareXdp::attach(&tb.online, iface::ONLINE_TO_CLIENT, Action::Drop)?;
    receive_in_napi_thread(&tb)?;
    let tx = |path| -> anyhow::Result<(Flooded, u64)> {
        let duration = Duration::from_secs_f64(seconds);
        let before = xdp_drops(&tb)?;
        let flooded = tb.client.run(move || {
            flood::flood(
                path,
                iface::CLIENT_TO_ONLINE,
                &flood::resets(addr::CLIENT, (addr::ONLINE, 80)),
                None,
                duration,
            )
        })??;
        Ok((flooded, xdp_drops(&tb)? - before))
    };
    let (tx_af_xdp, tx_af_xdp_arrived) = tx(Path::AfXdp)?;
    let (tx_raw, tx_raw_arrived) = tx(Path::Raw)?;
    Ok(Extras { mirror, mirror_stats, mirror_cpu, mirror_napi, tx_af_xdp, tx_af_xdp_arrived, tx_raw, tx_raw_arrived })
}

pub fn rate_label(rate: Option<u64>) -> String {
    rate.map_or_else(|| "unpaced".to_owned(), |r| format!("{} k/s", r / 1000))
}

pub fn markdown(steps: &[Step], extras: Option<&Extras>, seconds: f64) -> String {
    let mut md = format!(
        "### Capture path (copy mode; 54-byte TCP frames from an AF_XDP generator, {seconds} s per step; the interface \
         receives in a NAPI thread)\n\n\
         | step | bare XDP_PASS: offered → reached IP (pps) | copier: offered (pps) | XDP saw | lost before XDP | ring full | \
         queue full | truncated | workers processed | processed pps | CPU ms: copier, NAPI thread (bare's) | production stack received | \
         production probes answered |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for s in steps {
        let c = &s.copier_stats;
        let _ = writeln!(
            md,
            "| {} | {:.0} → {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0}, {:.0} ({:.0}) | {} | {}/{} |",
            rate_label(s.requested),
            s.baseline.pps(),
            s.baseline_pps(),
            s.copier.pps(),
            c.get("seen"),
            s.lost_before_xdp(),
            c.get("ring_full"),
            c.get("queue_full"),
            c.get("truncated"),
            c.get("captured"),
            s.processed_pps(),
            s.copier_cpu.0 as f64 / 1e3,
            s.copier_napi.0 as f64 / 1e3,
            s.baseline_napi.0 as f64 / 1e3,
            s.copier_ip_received,
            s.probes_answered,
            PROBES,
        );
    }
    let peak = |f: &dyn Fn(&Step) -> f64| steps.iter().map(f).fold(0.0, f64::max);
    let (processed, baseline) = (peak(&|s| s.processed_pps()), peak(&|s| s.baseline_pps()));
    let _ = writeln!(
        md,
        "\nPeaks over the steps: the copier's workers processed {processed:.0} pps; the bare XDP_PASS program let {baseline:.0} pps \
         through to the stack on the same interface: {:.0} %.",
        100.0 * processed / baseline.max(1.0)
    );
    if let Some(s) = steps.iter().max_by(|a, b| a.processed_pps().total_cmp(&b.processed_pps())) {
        let (copier, with_kernel, bare) = s.per_core();
        let _ = writeln!(
            md,
            "Per core at that step (frames per CPU-second, from /proc): the copier {:.2} Mpps, the copier with the interface's \
             NAPI thread (XDP and the stack) {:.2} Mpps; the bare program's NAPI thread {:.2} Mpps.",
            copier / 1e6,
            with_kernel / 1e6,
            bare / 1e6
        );
    }
    let lossless = steps
        .iter()
        .filter(|s| s.copier_dropped() == 0 && s.lost() == 0)
        .map(|s| s.copier.pps())
        .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
    let _ = writeln!(
        md,
        "Highest offered rate with zero loss: {}. Production: every frame the program saw was passed on ({}).",
        lossless.map_or_else(|| "none".to_owned(), |p| format!("{p:.0} pps")),
        if steps.iter().all(|s| s.copier_stats.get("passed") == s.copier_stats.get("seen")) {
            "passed = seen in every step"
        } else {
            "NOT in every step: see the JSON"
        }
    );
    if let Some(e) = extras {
        let _ = writeln!(
            md,
            "\nMirror mode (AF_XDP receive, unpaced): offered {:.0} pps, redirected {}, workers processed {:.0} pps; per core \
             (frames per CPU-second) {:.2} Mpps for the copier, {:.2} Mpps with the interface's NAPI thread (XDP, copy into \
             the AF_XDP ring).\n\
             Transmit into a bare XDP_DROP, unpaced, 54-byte frames, arrived (handed over): AF_XDP {:.0} pps ({:.0}), \
             raw IP socket {:.0} pps ({:.0}): {:.1}×. The sender's CPU per frame handed over: AF_XDP {:.2} µs, raw IP \
             socket {:.2} µs.",
            e.mirror.pps(),
            e.mirror_stats.get("redirected"),
            e.mirror_pps(),
            e.mirror_per_core().0 / 1e6,
            e.mirror_per_core().1 / 1e6,
            e.af_xdp_arrived_pps(),
            e.tx_af_xdp.pps(),
            e.raw_arrived_pps(),
            e.tx_raw.pps(),
            e.af_xdp_arrived_pps() / e.raw_arrived_pps().max(1.0),
            e.tx_af_xdp.cpu_us_per_frame(),
            e.tx_raw.cpu_us_per_frame(),
        );
    }
    md
}

fn flooded_json(f: &Flooded) -> serde_json::Value {
    serde_json::json!({ "sent": f.sent, "errors": f.errors, "seconds": f.seconds, "pps": f.pps(), "cpu_us": f.cpu_us })
}

pub fn json(steps: &[Step], extras: Option<&Extras>) -> serde_json::Value {
    let steps: Vec<_> = steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "requested_pps": s.requested,
                "baseline": flooded_json(&s.baseline),
                "baseline_ip_received": s.baseline_ip_received,
                "baseline_pps": s.baseline_pps(),
                "copier": flooded_json(&s.copier),
                "copier_ip_received": s.copier_ip_received,
                "copier_counters": s.copier_stats.totals,
                "processed_pps": s.processed_pps(),
                "lost": s.lost(),
                "lost_before_xdp": s.lost_before_xdp(),
                "copier_dropped": s.copier_dropped(),
                "loss_pct": s.loss_pct(),
                "probes_answered": s.probes_answered,
                "baseline_napi_cpu_us": s.baseline_napi.0,
                "copier_cpu_us": s.copier_cpu.0,
                "copier_napi_cpu_us": s.copier_napi.0,
                "probes": PROBES,
            })
        })
        .collect();
    let extras = extras.map(|e| {
        serde_json::json!({
            "mirror": flooded_json(&e.mirror),
            "mirror_counters": e.mirror_stats.totals,
            "mirror_processed_pps": e.mirror_pps(),
            "mirror_cpu_us": e.mirror_cpu.0,
            "mirror_napi_cpu_us": e.mirror_napi.0,
            "mirror_per_core_pps": e.mirror_per_core().0,
            "mirror_with_napi_per_core_pps": e.mirror_per_core().1,
            "tx_af_xdp": flooded_json(&e.tx_af_xdp),
            "tx_af_xdp_arrived": e.tx_af_xdp_arrived,
            "tx_af_xdp_arrived_pps": e.af_xdp_arrived_pps(),
            "tx_raw": flooded_json(&e.tx_raw),
            "tx_raw_arrived": e.tx_raw_arrived,
            "tx_raw_arrived_pps": e.raw_arrived_pps(),
        })
    });
    serde_json::json!({ "steps": steps, "fastest": extras })
}

/// Offered vs processed, and loss, as SVG.
pub fn plot(steps: &[Step]) -> String {
    let points = |f: &dyn Fn(&Step) -> (f64, f64)| steps.iter().map(f).collect::<Vec<_>>();
    svg::document(&[
        svg::Chart {
            title: "Capture path: offered vs processed (copy mode)".into(),
            x_label: "offered, frames/s".into(),
            y_label: "frames/s".into(),
            series: vec![
                svg::Series {
                    label: "bare XDP_PASS → IP".into(),
                    color: "#888",
                    points: points(&|s| (s.baseline.pps(), s.baseline_pps())),
                },
                svg::Series {
                    label: "copier → workers".into(),
                    color: "#d62728",
                    points: points(&|s| (s.copier.pps(), s.processed_pps())),
                },
                svg::Series {
                    label: "copier → production IP".into(),
                    color: "#1f77b4",
                    points: points(&|s| (s.copier.pps(), s.copier_ip_received as f64 / s.copier.seconds.max(1e-9))),
                },
            ],
            diagonal: true,
        },
        svg::Chart {
            title: "Capture path: loss".into(),
            x_label: "offered, frames/s".into(),
            y_label: "loss, % of offered".into(),
            series: vec![
                svg::Series {
                    label: "bare XDP_PASS: not at IP".into(),
                    color: "#888",
                    points: points(&|s| (s.baseline.pps(), s.baseline_loss_pct())),
                },
                svg::Series {
                    label: "copier: not processed".into(),
                    color: "#d62728",
                    points: points(&|s| (s.copier.pps(), s.loss_pct())),
                },
                svg::Series {
                    label: "copier: its own drops".into(),
                    color: "#ff7f0e",
                    points: points(&|s| (s.copier.pps(), pct(s.copier_dropped(), s.copier.sent))),
                },
            ],
            diagonal: false,
        },
    ])
}
