//! The copier end to end on the namespace test bed: real clients, real nginx servers, the real
//! intercept, and sessions replayed through real kernels.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use xdpcopy_testbed::{
    bins,
    capture::Tcpdump,
    gre::Gre,
    pcapgen,
    servers::Nginx,
    stats,
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

fn online_http() -> SocketAddr {
    SocketAddr::new(addr::ONLINE.into(), 80)
}

/// `n` short sessions to the online server (one GET of `/{prefix}/{i}` each), every one answered.
fn short_gets(prefix: &str, n: usize) {
    for i in 0..n {
        assert_eq!(traffic::http_get(online_http(), &format!("/{prefix}/{i}")).unwrap(), 200, "/{prefix}/{i}");
    }
}

fn target_http() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 8080)
}

fn control() -> SocketAddr {
    SocketAddr::new(addr::ASSIST_CONTROL.into(), 36524)
}

fn start_intercept(tb: &Testbed, name: &str) -> Process {
    start_intercept_for(tb, name, &[target_http()], &[])
}

fn start_intercept_for(tb: &Testbed, name: &str, targets: &[SocketAddr], extra: &[&str]) -> Process {
    let targets: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &targets.join(",")]).args([
        "--listen",
        &control().to_string(),
        "--stats-interval",
        "1",
    ]);
    cmd.args(extra);
    let mut p = tb.start(name, cmd).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    p
}

fn replay(tb: &Testbed, pcap: &Path, extra: &[&str]) -> Process {
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{}", target_http()), "-s", &addr::ASSIST_CONTROL.to_string()])
        .args(["-i", &pcap.to_string_lossy(), "--stats-interval", "1"])
        .args(extra);
    tb.start("copier", cmd).unwrap()
}

/// The largest captured packet in a (classic, little-endian) pcap file.
fn largest_packet(pcap: &Path) -> usize {
    let bytes = std::fs::read(pcap).unwrap();
    let (mut at, mut largest) = (24, 0);
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        largest = largest.max(len);
        at += 16 + len;
    }
    largest
}

/// Production and test nginx, and the intercept: what every copier test starts from.
struct Servers {
    online: Nginx,
    target: Nginx,
    _intercept: Process,
}

fn servers(tb: &Testbed) -> Servers {
    Servers {
        online: Nginx::start(tb, Host::Online, "online-nginx", online_http()).unwrap(),
        target: Nginx::start(tb, Host::Target, "target-nginx", target_http()).unwrap(),
        _intercept: start_intercept(tb, "intercept"),
    }
}

fn request_set(lines: Vec<String>) -> BTreeSet<String> {
    lines.into_iter().collect()
}

/// Runs `traffic` in the client namespace and returns what the clients' side of it looked like
/// on the wire (tcpdump's `filter`), as a pcap file.
fn record(tb: &Testbed, filter: &str, traffic: impl FnOnce() + Send + 'static) -> PathBuf {
    let dump = Tcpdump::start(tb, Host::Client, iface::CLIENT_TO_ONLINE, filter, "clients").unwrap();
    tb.client.run(traffic).unwrap();
    dump.finish().unwrap()
}

#[test]
fn a_captured_pcap_replays_every_request_to_the_target_through_raw_sockets() {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);

    let pcap = record(&tb, "tcp port 80", || {
        short_gets("short", 20);
        for k in 0..3 {
            let paths: Vec<String> = (0..5).map(|i| format!("/keepalive/{k}/{i}")).collect();
            assert_eq!(traffic::http_keepalive(online_http(), &paths).unwrap(), vec![200; 5]);
        }
    });
    assert_eq!(online.requests().len(), 35);

    // Raw sockets here; the AF_XDP path (the default) has its own test below.
    let mut copier = replay(&tb, &pcap, &["--tx", "raw"]);
    let status = copier.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", copier.describe());
    let summary = stats::last(&copier.stdout()).expect("a summary line");
    assert!(summary.summary, "{}", copier.describe());
    assert_eq!(request_set(target.requests()), request_set(online.requests()), "{}", copier.describe());
    assert_eq!(target.requests().len(), 35, "each request once");
    assert_eq!(summary.get("completed"), 23, "{}", copier.describe());
}

#[test]
fn a_truncated_capture_file_replays_what_it_holds_and_says_where_it_ended() {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);
    let pcap = record(&tb, "tcp port 80", || {
        short_gets("cut", 10);
    });
    assert_eq!(online.requests().len(), 10);
    // Cut the file inside its last record (the last session's final ACK).
    let bytes = std::fs::read(&pcap).unwrap();
    let cut = tb.dir().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();

    let mut copier = replay(&tb, &cut, &[]);
    let status = copier.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", copier.describe());
    assert!(copier.stderr().contains("is truncated or corrupt after"), "{}", copier.describe());
    assert_eq!(request_set(target.requests()), request_set(online.requests()), "{}", copier.describe());
}

fn start_online_copier(tb: &Testbed, extra: &[&str]) -> Process {
    start_copier_on(tb, iface::ONLINE_TO_CLIENT, extra)
}

/// A copier reading interface `on` of the online host.
fn start_copier_on(tb: &Testbed, on: &str, extra: &[&str]) -> Process {
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{}", target_http()), "-s", &addr::ASSIST_CONTROL.to_string()])
        .args(["--iface", on, "--stats-interval", "0.5"])
        .args(extra);
    let mut p = tb.start("copier", cmd).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    p
}

/// Waits until `nginx` logged `n` requests (or the time is up), returns what it logged.
fn wait_requests(nginx: &Nginx, n: usize, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    while nginx.requests().len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx.requests()
}

#[test]
fn live_traffic_is_copied_while_production_answers_every_client() {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);
    let mut copier = start_online_copier(&tb, &[]);
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    let statuses = tb
        .client
        .run(|| {
            let mut all = Vec::new();
            for i in 0..30 {
                all.push(traffic::http_get(online_http(), &format!("/live/{i}")).unwrap());
            }
            for k in 0..2 {
                let paths: Vec<String> = (0..5).map(|i| format!("/live-keepalive/{k}/{i}")).collect();
                all.extend(traffic::http_keepalive(online_http(), &paths).unwrap());
            }
            all
        })
        .unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "production answered every client: {statuses:?}");
    assert_eq!(online.requests().len(), 40);
    let copied = wait_requests(&target, 40, Duration::from_secs(15));
    assert_eq!(request_set(copied), request_set(online.requests()), "{}", copier.describe());
    assert_eq!(target.requests().len(), 40, "each request once");

    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    assert_eq!(tb.online.xdp_program(iface::ONLINE_TO_CLIENT).unwrap(), None, "no XDP program left");
    let summary = stats::last(&copier.stdout()).unwrap();
    assert!(summary.summary && summary.get("copied") >= summary.get("matched") - summary.get("ring_full"));
    assert_eq!(summary.get("ring_full"), 0);
}

/// `--load-file` and SIGHUP: a live copy's `-n` changes for the sessions that start afterwards;
/// a file that does not parse is named and changes nothing; production answers every client.
#[test]
fn sighup_changes_the_load_of_a_live_copy_for_the_sessions_that_follow() {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);
    let load = tb.dir().join("load");
    std::fs::write(&load, "multiply = 1\n").unwrap();
    let mut copier = start_online_copier(&tb, &["--load-file", &load.to_string_lossy()]);
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();
    // What the test server answered (200), not only what reached it.
    let copied = |prefix: &str| {
        target.answers().iter().filter(|(r, status)| r.contains(&format!("/{prefix}/")) && *status == 200).count()
    };
    let wait = |prefix: &str, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while copied(prefix) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300)); // and no more than that
        copied(prefix)
    };

    tb.client.run(|| short_gets("before", 10)).unwrap();
    assert_eq!(wait("before", 10), 10, "{}", copier.describe());

    std::fs::write(&load, "# three copies from now on\nmultiply = 3\n").unwrap();
    copier.signal(libc::SIGHUP).unwrap();
    copier.wait_for_line(STARTUP, |l| l.contains("SIGHUP: load -r 100 -n 3")).unwrap();
    tb.client.run(|| short_gets("after", 10)).unwrap();
    assert_eq!(wait("after", 30), 30, "{}", copier.describe());

    std::fs::write(&load, "multiply = lots\n").unwrap();
    copier.signal(libc::SIGHUP).unwrap();
    copier
        .wait_for_line(STARTUP, |l| l.contains("multiply must be 1 to 1000") && l.contains("stays -r 100 -n 3"))
        .unwrap();
    tb.client.run(|| short_gets("still", 10)).unwrap();
    assert_eq!(wait("still", 30), 30, "the load stayed: {}", copier.describe());

    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    assert_eq!(online.requests().len(), 30, "production saw each request once");
}

#[test]
fn two_workers_multiply_with_client_ranges_and_deliver_every_request_three_times() {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);
    let pcap = record(&tb, "tcp port 80", || {
        for i in 0..10 {
            traffic::http_get(online_http(), &format!("/copy/{i}")).unwrap();
        }
    });
    // Copies come from 10.100.1.100-10.100.1.110, inside the network the test server routes
    // through the assistant host. Two workers, each with an AF_XDP socket on a TX queue of its
    // own; -c crowds many sessions onto few addresses, where the workers' ports must not clash.
    let mut copier =
        replay(&tb, &pcap, &["-n", "3", "-c", "10.100.1.100-10.100.1.110", "--workers", "2", "--tx", "xdp"]);
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    let got = target.requests();
    assert_eq!(got.len(), 30, "{}", copier.describe());
    for line in online.requests() {
        assert_eq!(got.iter().filter(|l| **l == line).count(), 3, "{line}");
    }
    for queue in 0..2 {
        assert!(
            copier.stderr().contains(&format!("AF_XDP transmit on to-target queue {queue}")),
            "{}",
            copier.describe()
        );
    }
    let summary = stats::last(&copier.stdout()).unwrap();
    assert_eq!(
        (summary.get("completed"), summary.get("requests"), summary.get("workers")),
        (30, 30, 2),
        "{}",
        copier.describe()
    );
    assert_eq!((summary.get("unmatched_replies"), summary.get("tx_errors")), (0, 0), "{}", copier.describe());
}

#[test]
fn mirror_mode_replays_what_a_span_port_sees_with_two_workers() {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);
    tb.mirror_client_link().unwrap();
    // With --report, production's mirrored answers are taken too, and compared.
    let report = tb.dir().join("report");
    let args = ["--mode", "mirror", "--mirror-other", "drop", "--workers", "2", "--ignore-header", "date"];
    let mut copier =
        start_copier_on(&tb, iface::ONLINE_MIRROR, &[&args[..], &["--report", &report.to_string_lossy()]].concat());
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    let statuses = tb
        .client
        .run(|| {
            let mut all: Vec<u16> =
                (0..30).map(|i| traffic::http_get(online_http(), &format!("/mirror/{i}")).unwrap()).collect();
            let paths: Vec<String> = (0..5).map(|i| format!("/mirror-keepalive/{i}")).collect();
            all.extend(traffic::http_keepalive(online_http(), &paths).unwrap());
            all
        })
        .unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "production answered every client: {statuses:?}");
    let copied = wait_requests(&target, 35, Duration::from_secs(15));
    assert_eq!(request_set(copied), request_set(online.requests()), "{}", copier.describe());
    assert_eq!(target.requests().len(), 35, "each request once");

    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    assert_eq!(tb.online.xdp_program(iface::ONLINE_MIRROR).unwrap(), None, "no XDP program left");
    let s = stats::last(&copier.stdout()).unwrap();
    assert!(s.get("redirected") >= 35 * 3 && s.get("redirected") == s.get("matched"), "{}", copier.describe());
    assert!(s.get("answers_captured") >= 35, "production's answers are redirected: {}", copier.describe());
    assert_eq!((s.get("copied"), s.get("no_socket"), s.get("queue_full")), (0, 0, 0), "{}", copier.describe());
    // The same build answered as production did (less its Date), request by request.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap()).unwrap();
    let c = &report["targets"][0]["comparison"];
    assert_eq!(
        (c["compared"].as_u64(), c["different"].as_u64(), c["not_compared"].as_u64()),
        (Some(35), Some(0), Some(0)),
        "{c:#}"
    );
}

/// Live copy mode, production's answers taken on egress: a baseline (production's build) and a
/// candidate (another body under /changed/) get every session, through a repeated `-x`; every
/// answer carries its own Date, which the baseline cancels out.
#[test]
fn copy_mode_names_the_candidates_differences_live() {
    let tb = Testbed::new().unwrap();
    let locations = |changed: &str| {
        format!(r#"location / {{ return 200 "ok\n"; }} location /changed/ {{ return 200 "{changed}\n"; }}"#)
    };
    let candidate_http = SocketAddr::new(addr::TARGET.into(), 8081);
    let online = Nginx::start_with(&tb, Host::Online, "online-nginx", online_http(), &locations("original")).unwrap();
    let baseline = Nginx::start_with(&tb, Host::Target, "baseline", target_http(), &locations("original")).unwrap();
    let candidate = Nginx::start_with(&tb, Host::Target, "candidate", candidate_http, &locations("altered!")).unwrap();
    let _intercept = start_intercept_for(&tb, "intercept", &[target_http(), candidate_http], &[]);
    let report = tb.dir().join("report");
    let (second, report_arg) = (format!("80-{candidate_http}"), report.to_string_lossy().into_owned());
    let base = target_http().to_string();
    let mut copier = start_online_copier(&tb, &["-x", &second, "--baseline", &base, "--report", &report_arg]);
    copier.wait_for_line(STARTUP, |l| l.contains("TC egress program attached")).unwrap();
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    let statuses = tb
        .client
        .run(|| {
            (0..12)
                .map(|i| {
                    let path = if i % 4 == 0 { format!("/changed/{i}") } else { format!("/same/{i}") };
                    traffic::http_get(online_http(), &path).unwrap()
                })
                .collect::<Vec<u16>>()
        })
        .unwrap();
    assert_eq!(statuses, vec![200; 12], "production answered every client");
    assert_eq!(online.requests().len(), 12);
    for nginx in [&baseline, &candidate] {
        assert_eq!(wait_requests(nginx, 12, Duration::from_secs(15)).len(), 12, "{}", copier.describe());
    }
    // The last answers' facts may still be on their way.
    std::thread::sleep(Duration::from_millis(1500));
    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    let s = stats::last(&copier.stdout()).unwrap();
    assert!(s.get("answers_copied") >= 12 && s.get("answers_captured") >= 12, "{}", copier.describe());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap()).unwrap();
    let of = |at: SocketAddr| {
        let all = report["targets"].as_array().unwrap();
        all.iter().find(|t| t["target"] == at.to_string()).unwrap_or_else(|| panic!("{report:#}"))["comparison"].clone()
    };
    let c = of(candidate_http);
    assert_eq!((c["compared"].as_u64(), c["not_compared"].as_u64()), (Some(12), Some(0)), "{c:#}");
    assert_eq!((c["different"].as_u64(), c["different_by_kind"]["body"].as_u64()), (Some(3), Some(3)), "{c:#}");
    let samples = c["samples"].as_array().unwrap();
    assert!(samples.iter().all(|s| s["request"].as_str().unwrap().contains("/changed/")), "{c:#}");
    assert_eq!(of(target_http())["compared"], 12, "the baseline's answers are compared too");
}

#[test]
fn an_idle_live_copy_keeps_its_intercept_link_past_the_idle_timeout() {
    let tb = Testbed::new().unwrap();
    let _online = Nginx::start(&tb, Host::Online, "online-nginx", online_http()).unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let intercept = start_intercept_for(&tb, "intercept", &[target_http()], &["--idle-timeout", "11"]);
    let mut copier = start_online_copier(&tb, &[]);
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    // No traffic for over twice the idle timeout: only the copier's pings keep the link.
    std::thread::sleep(Duration::from_secs(24));
    let last = |p: &Process| p.stdout().lines().filter_map(stats::parse).next_back().expect("a stats line");
    let (c, i) = (last(&copier), last(&intercept));
    assert_eq!((c.get("reconnects"), c.get("intercepts")), (0, 1), "{}", copier.describe());
    assert_eq!(i.get("idle_closed"), 0, "{}", intercept.describe());
    tb.client.run(|| short_gets("idle", 3)).unwrap();
    assert_eq!(wait_requests(&target, 3, Duration::from_secs(10)).len(), 3);
    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn replay_survives_an_intercept_restart() {
    let tb = Testbed::new().unwrap();
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_http()).unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let mut intercept = start_intercept(&tb, "intercept");
    let mut copier = start_online_copier(&tb, &[]);
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    tb.client.run(|| short_gets("before", 5)).unwrap();
    assert_eq!(wait_requests(&target, 5, Duration::from_secs(10)).len(), 5);

    intercept.signal(libc::SIGTERM).unwrap();
    intercept.wait_timeout(Duration::from_secs(10)).unwrap();
    let _restarted = start_intercept(&tb, "intercept-again");
    copier
        .wait_for_line(Duration::from_secs(15), |l| {
            stats::parse(l).is_some_and(|s| s.get("reconnects") >= 1 && s.get("intercepts") == 1)
        })
        .unwrap();

    tb.client.run(|| short_gets("after", 5)).unwrap();
    let got = wait_requests(&target, 10, Duration::from_secs(15));
    let after: Vec<_> = got.iter().filter(|l| l.contains("/after/")).collect();
    assert_eq!(after.len(), 5, "sessions after the restart complete: {got:?}\n{}", copier.describe());
    assert_eq!(online.requests().len(), 10);
    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn large_posts_pipelined_redis_and_client_resets_replay_whole() {
    let tb = Testbed::new().unwrap();
    let redis_online = SocketAddr::new(addr::ONLINE.into(), 6379);
    let redis_target = SocketAddr::new(addr::TARGET.into(), 6379);
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_http()).unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let _online_redis =
        xdpcopy_testbed::servers::Redis::start(&tb, Host::Online, "online-redis", redis_online).unwrap();
    let _target_redis =
        xdpcopy_testbed::servers::Redis::start(&tb, Host::Target, "target-redis", redis_target).unwrap();
    let _intercept = start_intercept_for(&tb, "intercept", &[target_http(), redis_target], &[]);

    // Captured where the clients send, offloads on: the capture holds TSO super-segments.
    let dump =
        Tcpdump::start(&tb, Host::Client, iface::CLIENT_TO_ONLINE, "tcp port 80 or tcp port 6379", "clients").unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    tb.client
        .run(move || {
            for i in 0..3 {
                assert_eq!(traffic::http_post(online_http(), &format!("/upload/{i}"), &body).unwrap(), 502);
            }
            for i in 0..3 {
                assert_eq!(traffic::http_get_then_reset(online_http(), &format!("/reset/{i}")).unwrap(), 200);
            }
        })
        .unwrap();
    let bench = tb
        .client
        .exec(
            "redis-benchmark",
            &[
                "-h",
                &addr::ONLINE.to_string(),
                "-p",
                "6379",
                "-n",
                "2000",
                "-c",
                "4",
                "-P",
                "16",
                "-t",
                "set,get",
                "-q",
            ],
        )
        .unwrap();
    assert!(bench.status.success());
    let pcap = dump.finish().unwrap();
    assert!(largest_packet(&pcap) > 3000, "the capture holds super-segments larger than any MTU");
    let online_redis_counts = xdpcopy_testbed::servers::redis_command_counts(&tb, Host::Online, redis_online).unwrap();
    assert_eq!(online_redis_counts.get("set"), Some(&2000));

    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{},6379-{}", target_http(), redis_target), "-s", &addr::ASSIST_CONTROL.to_string()])
        .args(["-i", &pcap.to_string_lossy(), "-a", "10", "--stats-interval", "1"]);
    let mut copier = tb.start("copier", cmd).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(90)).unwrap().success(), "{}", copier.describe());

    // Every POST whole: same request lines and the same lengths (body included).
    let uploads = |n: &Nginx| n.entries().into_iter().filter(|(r, _)| r.contains("/upload/")).collect::<BTreeSet<_>>();
    assert_eq!(uploads(&target), uploads(&online), "{}", copier.describe());
    assert!(uploads(&online).iter().all(|(_, len)| *len > 200_000));
    let resets = |n: &Nginx| n.requests().into_iter().filter(|r| r.contains("/reset/")).collect::<BTreeSet<_>>();
    assert_eq!(resets(&target), resets(&online));
    let redis_target_counts = xdpcopy_testbed::servers::redis_command_counts(&tb, Host::Target, redis_target).unwrap();
    assert_eq!(redis_target_counts, online_redis_counts, "{}", copier.describe());
    let summary = stats::last(&copier.stdout()).unwrap();
    assert!(summary.get("reset") >= 3, "client resets replayed: {}", copier.describe());
}

#[test]
fn af_xdp_transmit_replays_every_request_like_raw_sockets() {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);
    let pcap = record(&tb, "tcp port 80", || {
        short_gets("xdp", 15);
        let paths: Vec<String> = (0..5).map(|i| format!("/xdp-keepalive/{i}")).collect();
        assert_eq!(traffic::http_keepalive(online_http(), &paths).unwrap(), vec![200; 5]);
    });
    let mut copier = replay(&tb, &pcap, &["--tx", "xdp"]);
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    assert!(copier.stderr().contains("AF_XDP transmit on to-target"), "{}", copier.describe());
    assert_eq!(request_set(target.requests()), request_set(online.requests()), "{}", copier.describe());
    assert_eq!(target.requests().len(), 20);
    let summary = stats::last(&copier.stdout()).unwrap();
    assert_eq!((summary.get("completed"), summary.get("tx_errors")), (16, 0), "{}", copier.describe());
}

#[test]
fn a_burst_larger_than_the_af_xdp_ring_and_the_opening_limit_waits_and_loses_nothing() {
    let tb = Testbed::new().unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let _intercept = start_intercept(&tb, "intercept");
    // 5 000 sessions 10 µs apart, replayed at maximum speed: every SYN is due at once, more
    // frames than the TX ring (2 048) and the UMEM (4 096) hold, and more than the test
    // server's SYN queue takes (it answers with SYN cookies).
    let sessions = pcapgen::Sessions { count: 5_000, requests_per_session: 1, gap_us: 10 };
    let pcap = tb.dir().join("burst.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    // At most 256 sessions opening at once: the rest wait their turn, none is lost.
    let mut copier = replay(&tb, &pcap, &["--tx", "xdp", "-a", "1000000", "--max-opening", "256"]);
    assert!(copier.wait_timeout(Duration::from_secs(120)).unwrap().success(), "{}", copier.describe());
    let summary = stats::last(&copier.stdout()).unwrap();
    assert_eq!(summary.get("tx_errors"), 0, "{}", copier.describe());
    assert!(summary.get("queued") > 0, "the limit held sessions back: {}", copier.describe());
    // Without backpressure the whole file would be read at once and nearly all 5 000 wait.
    assert!(
        summary.get("queued_peak") <= 256 + 256,
        "the file was read no faster than sessions opened (one 256-frame batch over): {}",
        copier.describe()
    );
    let received = target.requests().iter().filter(|r| r.starts_with("GET /bench/")).count();
    assert_eq!(received, 5_000, "{}", copier.describe());
    assert_eq!(summary.get("completed"), 5_000, "{}", copier.describe());
}

/// 20 client ports, each with two connections 10 ms apart, replayed with `-a speed`: the test
/// server must answer all 40 requests, none retransmitted.
fn replay_reused_ports(speed: &str) {
    let tb = Testbed::new().unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let _intercept = start_intercept(&tb, "intercept");
    let sessions = pcapgen::Sessions { count: 40, requests_per_session: 1, gap_us: 20_000 };
    let pcap = tb.dir().join("reused.pcap");
    pcapgen::write_http_sessions_reusing_ports(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    let mut copier = replay(&tb, &pcap, &["--tx", "xdp", "-a", speed]);
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    let answered = target.answers().iter().filter(|(r, status)| r.starts_with("GET /bench/") && *status == 200).count();
    assert_eq!(answered, 40, "both connections of every port answered\n{}", copier.describe());
    let summary = stats::last(&copier.stdout()).unwrap();
    assert_eq!((summary.get("completed"), summary.get("requests")), (40, 40), "{}", copier.describe());
}

#[test]
fn a_client_port_reused_by_a_new_connection_is_replayed_and_answered_twice() {
    // The second connection takes over its predecessor's replay endpoint in the pass that
    // ends the predecessor: that pass releases and claims it again.
    replay_reused_ports("1");
}

#[test]
fn at_full_speed_a_port_reused_before_its_first_connection_was_replayed_is_answered_twice() {
    // Read at once, the second connection's SYN comes before the first's request has left: the
    // first finishes from its own replay endpoint, the second from another.
    replay_reused_ports("1000000");
}

#[test]
fn the_intercepts_pauses_are_not_counted_as_the_test_servers_latency() {
    let tb = Testbed::new().unwrap();
    let _target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    // After each reply the intercept's reader pauses 100 ms: most answers wait there.
    let _intercept = start_intercept_for(&tb, "intercept", &[target_http()], &["--coalesce-us", "100000"]);
    let sessions = pcapgen::Sessions { count: 20, requests_per_session: 1, gap_us: 30_000 };
    let pcap = tb.dir().join("paused.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    let json = tb.dir().join("summary.json");
    let mut copier = replay(&tb, &pcap, &["--summary-json", &json.to_string_lossy()]);
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let t = &summary["targets"][0];
    assert_eq!(t["requests_answered"], 20, "{summary:#}");
    // nginx answers a GET of nothing within a millisecond; the pause is the intercept's.
    let p90 = t["latency_us"]["target"]["p90"].as_u64().unwrap();
    assert!(p90 < 20_000, "target p90 {p90} µs: the intercept's pause counted\n{summary:#}");
}

#[test]
fn a_replay_to_a_silent_test_server_ends_after_the_grace_not_after_every_retransmission() {
    let tb = Testbed::new().unwrap();
    // No intercept: the test server's answers never reach the copier, as if it were down.
    let _target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let sessions = pcapgen::Sessions { count: 20, requests_per_session: 1, gap_us: 1_000 };
    let pcap = tb.dir().join("silent.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    let mut copier = replay(&tb, &pcap, &["--tx", "raw", "--log-format", "json"]);
    // Connect wait (10 s) + the grace (5 s), far below the SYN give-up limit (minutes).
    let status = copier.wait_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(3), "nothing was answered: the run failed\n{}", copier.describe());
    assert!(copier.stderr().contains("the test server answered nothing"), "{}", copier.describe());
    // Its log records are JSON lines (the closing verdict is a plain line of its own).
    let records: Vec<serde_json::Value> =
        copier.stderr().lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(records.iter().any(|r| r["level"] == "WARN" && r["target"] == "copier"), "{}", copier.describe());
    let summary = stats::last(&copier.stdout()).unwrap();
    assert_eq!(
        (summary.get("sessions"), summary.get("timed_out"), summary.get("facts")),
        (20, 20, 0),
        "{}",
        copier.describe()
    );
    assert!(summary.get("retransmitted") > 0, "sessions were still retransmitting: {}", copier.describe());
}

#[test]
fn max_rate_caps_new_sessions_and_duration_stops_the_replay() {
    let tb = Testbed::new().unwrap();
    let Servers { online: _online, target, _intercept } = servers(&tb);
    // 100 sessions over two seconds of capture.
    let sessions = pcapgen::Sessions { count: 100, requests_per_session: 1, gap_us: 20_000 };
    let pcap = tb.dir().join("paced.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    let mut copier = replay(&tb, &pcap, &["--max-rate", "10"]);
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    let s = stats::last(&copier.stdout()).unwrap();
    let (started, limited) = (s.get("sessions"), s.get("rate_limited"));
    // A second's burst, then ten a second over the two seconds the capture takes.
    assert!((20..=40).contains(&started), "{started} started\n{}", copier.describe());
    assert_eq!(started + limited, 100);
    assert_eq!(target.requests().len() as u64, started, "every admitted session answered");

    // Ten seconds of capture, stopped after one.
    let long = pcapgen::Sessions { count: 100, requests_per_session: 1, gap_us: 100_000 };
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), long).unwrap();
    let begun = std::time::Instant::now();
    let mut copier = replay(&tb, &pcap, &["--duration", "1"]);
    copier.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(begun.elapsed() < Duration::from_secs(8), "stopped early: {:?}", begun.elapsed());
    assert!(copier.stderr().contains("--duration reached"), "{}", copier.describe());
    assert!(stats::last(&copier.stdout()).unwrap().get("sessions") < 100);
}

/// A tmux session, killed on drop (also when the test panics).
struct Tmux(String);

impl Tmux {
    fn screen(&self) -> String {
        let out = std::process::Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

#[test]
fn a_replay_on_a_terminal_shows_a_live_progress_line() {
    let tb = Testbed::new().unwrap();
    let Servers { online: _online, target, _intercept } = servers(&tb);
    let sessions = pcapgen::Sessions { count: 400, requests_per_session: 1, gap_us: 10_000 };
    let pcap = tb.dir().join("progress.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    let copier = format!(
        "ip netns exec {} {} -x 80-{} -s {} -i {}; echo copier exited $?; sleep 60",
        tb.online.name(),
        bins::xdpcopy("copier").display(),
        target_http(),
        addr::ASSIST_CONTROL,
        pcap.display()
    );
    let tmux = Tmux(format!("{}-tty", tb.online.name()));
    let started = std::process::Command::new("tmux")
        .args(["new-session", "-d", "-s", &tmux.0, "-x", "160", "-y", "30", &copier])
        .status()
        .unwrap();
    assert!(started.success());
    let (mut live, mut seen) = (String::new(), false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let screen = tmux.screen();
        if !seen && screen.contains("% of the file") && screen.contains(" open, ") && screen.contains(" done | ") {
            (live, seen) = (screen.clone(), true);
        }
        if screen.contains("copier exited") {
            assert!(seen, "no live line before the end:\n{screen}");
            assert!(screen.contains("copier exited 0"), "{screen}");
            assert!(screen.contains("copier summary:"), "the summary follows the live line:\n{screen}");
            assert!(!screen.contains("copier stats:"), "no periodic stats lines on a terminal:\n{screen}");
            assert_eq!(target.requests().len(), 400);
            assert!(live.contains("left |"), "{live}");
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the replay did not end within a minute:\n{}", tmux.screen());
}

#[test]
fn a_looped_capture_replays_every_session_once_a_round() {
    let tb = Testbed::new().unwrap();
    let Servers { online: _online, target, _intercept } = servers(&tb);
    let sessions = pcapgen::Sessions { count: 20, requests_per_session: 2, gap_us: 1_000 };
    let pcap = tb.dir().join("loop.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    let mut copier = replay(&tb, &pcap, &["--loop", "3"]);
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    let mut counts = std::collections::BTreeMap::new();
    for (request, status) in target.answers() {
        assert_eq!(status, 200);
        *counts.entry(request).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 40, "every request of the capture");
    assert!(counts.values().all(|&n| n == 3), "three times each: {counts:?}");
    assert_eq!(stats::last(&copier.stdout()).unwrap().get("sessions"), 60);
}

/// Mirror mode on a cloud-style mirror: every frame of the client link arrives inside `tunnel`
/// (a real tunnel device's packets); the copier looks inside (`--decap`) and replays every
/// request, and production's answers too, compared.
fn a_tunnelled_mirror_is_replayed_whole(tunnel: Tunnel, decap: &str) {
    let tb = Testbed::new().unwrap();
    let Servers { online, target, _intercept } = servers(&tb);
    let _relay = match tunnel {
        Tunnel::Device(args) => tb.mirror_client_link_through(args).map(|()| None),
        Tunnel::Gre(kind) => tb.mirror_client_link_gre(kind).map(Some),
    }
    .unwrap();
    let args = ["--mode", "mirror", "--mirror-other", "drop", "--decap", decap, "--payload-bytes", "64"];
    let mut copier = start_copier_on(&tb, iface::ONLINE_MIRROR, &args);
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();
    let statuses = tb
        .client
        .run(|| {
            let mut all: Vec<u16> =
                (0..20).map(|i| traffic::http_get(online_http(), &format!("/tunnel/{i}")).unwrap()).collect();
            let paths: Vec<String> = (0..5).map(|i| format!("/tunnel-keepalive/{i}")).collect();
            all.extend(traffic::http_keepalive(online_http(), &paths).unwrap());
            all.push(traffic::http_post(online_http(), "/upload/big", &vec![b'u'; 50_000]).unwrap());
            all
        })
        .unwrap();
    assert_eq!(statuses.len(), 26);
    let copied = wait_requests(&target, 26, Duration::from_secs(15));
    assert_eq!(request_set(copied), request_set(online.requests()), "{}", copier.describe());
    let answered = |n: &Nginx| {
        let mut log: Vec<_> = n.log().into_iter().map(|e| (e.request, e.status, e.length)).collect();
        log.sort();
        log
    };
    assert_eq!(
        answered(&target),
        answered(&online),
        "each request once and whole, answered alike\n{}",
        copier.describe()
    );

    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    let s = stats::last(&copier.stdout()).unwrap();
    assert!(s.get("redirected") >= 26 * 3 && s.get("redirected") == s.get("matched"), "{}", copier.describe());
    assert!(s.get("decapsulated") >= s.get("redirected"), "{}", copier.describe());
    assert_eq!((s.get("malformed"), s.get("no_socket")), (0, 0), "{}", copier.describe());
    assert!(s.get("answers_captured") >= 26, "production's answers came through the tunnel too");
}

/// How the mirror is encapsulated: by a kernel tunnel device (`ip link add ... ARGS`), or, as
/// this kernel has no GRE devices, by the test bed's own GRE encapsulator.
enum Tunnel {
    Device(&'static [&'static str]),
    Gre(Gre),
}

#[test]
fn mirror_mode_looks_inside_a_vxlan_mirror() {
    a_tunnelled_mirror_is_replayed_whole(Tunnel::Device(&["type", "vxlan", "id", "42", "dstport", "4789"]), "vxlan");
}

#[test]
fn mirror_mode_looks_inside_a_vxlan_mirror_on_another_port() {
    let vxlan = Tunnel::Device(&["type", "vxlan", "id", "42", "dstport", "8472"]);
    a_tunnelled_mirror_is_replayed_whole(vxlan, "vxlan:8472,gre");
}

#[test]
fn mirror_mode_looks_inside_a_gre_mirror() {
    a_tunnelled_mirror_is_replayed_whole(Tunnel::Gre(Gre::Plain), "gre");
}

#[test]
fn mirror_mode_looks_inside_erspan_type_ii_and_iii() {
    a_tunnelled_mirror_is_replayed_whole(Tunnel::Gre(Gre::ErspanII), "gre");
    a_tunnelled_mirror_is_replayed_whole(Tunnel::Gre(Gre::ErspanIII), "vxlan,gre");
}
