//! Both XDP programs on the namespace test bed: real traffic moves their counters, and the
//! programs are gone after SIGINT, SIGTERM and SIGKILL. A foreign program is never replaced
//! without `--force`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::tcp::flags::SYN;
use xdpcopy_testbed::{
    bins, raw,
    servers::{LineServer, Nginx},
    stats,
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);

fn online_http() -> SocketAddr {
    SocketAddr::new(addr::ONLINE.into(), 80)
}

fn target_line() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 8080)
}

fn start_copier(tb: &Testbed, name: &str, extra: &[&str]) -> Process {
    let mapping = format!("80-{}", target_line());
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    // No intercept runs in these tests: the copier keeps trying to reach one, and captures anyway.
    cmd.args([
        "-x",
        &mapping,
        "-s",
        &addr::ASSIST_CONTROL.to_string(),
        "--iface",
        iface::ONLINE_TO_CLIENT,
        "--stats-interval",
        "0.2",
    ])
    .args(extra);
    cmd.env("RUST_LOG", "debug");
    tb.start(name, cmd).unwrap()
}

fn start_intercept(tb: &Testbed, name: &str, iface_name: &str, host: Host, extra: &[&str]) -> Process {
    let target = target_line().to_string();
    let mut cmd = tb.intercept_command(host);
    cmd.args(["--iface", iface_name, "--target", &target, "--stats-interval", "0.2"]).args(extra);
    tb.start(name, cmd).unwrap()
}

fn wait_attached(p: &mut Process) {
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
}

/// Waits until the last stats line of `p` satisfies `pred`.
fn wait_stats(p: &mut Process, what: &str, pred: impl Fn(&stats::Stats) -> bool) -> stats::Stats {
    p.wait_for_line(SETTLE, |l| stats::parse(l).is_some_and(|s| pred(&s)))
        .map(|l| stats::parse(&l).unwrap())
        .unwrap_or_else(|err| panic!("{what}: {err:#}"))
}

fn wait_detached(tb: &Testbed, host: Host, iface_name: &str) {
    let deadline = Instant::now() + SETTLE;
    while tb.host(host).xdp_program(iface_name).unwrap().is_some() {
        assert!(Instant::now() < deadline, "XDP program still on {host:?}/{iface_name}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn both_programs_count_real_traffic_and_detach_on_sigint() {
    let tb = Testbed::new().unwrap();
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_http()).unwrap();
    let _target = LineServer::start(&tb, Host::Target, "target-server", target_line()).unwrap();
    let mut copier = start_copier(&tb, "copier", &[]);
    let mut intercept = start_intercept(&tb, "intercept", iface::ASSIST_TO_TARGET, Host::Assist, &[]);
    wait_attached(&mut copier);
    wait_attached(&mut intercept);
    assert!(tb.online.xdp_program(iface::ONLINE_TO_CLIENT).unwrap().is_some());
    assert!(tb.assist().xdp_program(iface::ASSIST_TO_TARGET).unwrap().is_some());

    // 20 short HTTP sessions from the client: each sends at least SYN, request and FIN to port 80.
    let statuses = tb
        .client
        .run(|| (0..20).map(|i| traffic::http_get(online_http(), &format!("/attach/{i}")).unwrap()).collect::<Vec<_>>())
        .unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "production answered {statuses:?}");
    assert_eq!(online.requests().len(), 20, "production served every request: copy mode passes everything");

    // Five SYNs from client addresses, sent from the online host as the copier sends them: the
    // test server's SYN-ACKs come back through the assistant host.
    for port in 40000..40005 {
        let syn = raw::ipv4_tcp((addr::CLIENT, port), (addr::TARGET, 8080), 1, 0, SYN, &[], &[]);
        tb.online.run(move || raw::send_ipv4(&syn)).unwrap().unwrap();
    }

    let c = wait_stats(&mut copier, "copier counters", |s| s.get("matched") >= 60);
    assert!(c.get("seen") >= c.get("matched"));
    assert_eq!(c.get("passed"), c.get("seen"), "copy mode passes every frame");
    let i = wait_stats(&mut intercept, "intercept counters", |s| s.get("matched") >= 5);
    assert_eq!(i.get("malformed"), 0);
    assert_eq!(i.get("redirected"), i.get("matched"), "every reply is stolen");

    for p in [&mut copier, &mut intercept] {
        p.signal(libc::SIGINT).unwrap();
        let status = p.wait_timeout(SETTLE).unwrap();
        assert!(status.success(), "exit after SIGINT: {status}\n{}", p.describe());
        assert!(stats::last(&p.stdout()).is_some_and(|s| s.summary), "summary printed\n{}", p.describe());
    }
    assert_eq!(tb.online.xdp_program(iface::ONLINE_TO_CLIENT).unwrap(), None);
    assert_eq!(tb.assist().xdp_program(iface::ASSIST_TO_TARGET).unwrap(), None);
}

#[test]
fn sigterm_and_sigkill_leave_no_program_behind() {
    let tb = Testbed::new().unwrap();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut intercept =
            start_intercept(&tb, &format!("intercept-{signal}"), iface::ASSIST_TO_TARGET, Host::Assist, &[]);
        wait_attached(&mut intercept);
        assert!(tb.assist().xdp_program(iface::ASSIST_TO_TARGET).unwrap().is_some());
        intercept.signal(signal).unwrap();
        intercept.wait_timeout(SETTLE).unwrap();
        wait_detached(&tb, Host::Assist, iface::ASSIST_TO_TARGET);
    }
}

#[test]
fn a_foreign_program_is_refused_unless_forced() {
    let tb = Testbed::new().unwrap();
    let mut first = start_copier(&tb, "first-copier", &[]);
    wait_attached(&mut first);
    let first_id = tb.online.xdp_program(iface::ONLINE_TO_CLIENT).unwrap().unwrap();

    let mut refused = start_intercept(&tb, "refused", iface::ONLINE_TO_CLIENT, Host::Online, &[]);
    let status = refused.wait_timeout(STARTUP).unwrap();
    assert_eq!(status.code(), Some(1), "{}", refused.describe());
    let err = refused.stderr();
    assert!(err.contains("refusing to replace") && err.contains(&format!("id {first_id}")), "{err}");
    assert!(err.contains("--force"), "the message says how to override: {err}");
    assert_eq!(tb.online.xdp_program(iface::ONLINE_TO_CLIENT).unwrap(), Some(first_id), "left untouched");

    let mut forced = start_intercept(&tb, "forced", iface::ONLINE_TO_CLIENT, Host::Online, &["--force"]);
    wait_attached(&mut forced);
    let now = tb.online.xdp_program(iface::ONLINE_TO_CLIENT).unwrap();
    assert!(now.is_some() && now != Some(first_id), "replaced: {now:?} (was {first_id})");
    forced.signal(libc::SIGINT).unwrap();
    assert!(forced.wait_timeout(SETTLE).unwrap().success(), "{}", forced.describe());
    wait_detached(&tb, Host::Online, iface::ONLINE_TO_CLIENT);
}

#[test]
fn ebpf_log_records_reach_the_process_log() {
    let tb = Testbed::new().unwrap();
    let mut copier = start_copier(&tb, "copier", &[]);
    wait_attached(&mut copier);
    // Broadcast Ethernet, EtherType IPv4, then only 10 bytes of IP header.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6]);
    tb.client.run(move || traffic::send_raw_frame(iface::CLIENT_TO_ONLINE, &frame)).unwrap().unwrap();
    copier.wait_for_line(SETTLE, |l| l.contains("copier: malformed frame: truncated header")).unwrap();
    let s = wait_stats(&mut copier, "malformed counter", |s| s.get("malformed") >= 1);
    assert_eq!(s.get("malformed"), 1);
}
