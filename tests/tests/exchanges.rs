//! Answered, not only delivered: production and the test server are nginx in front of a backend
//! that reads every request whole and takes its time to answer (slow paths 2.5 s), so a copier
//! that closes or resets a session before the test server answered shows up in the test
//! server's log as status 499. Every test asserts what the test server *answered* (request
//! line, length, status) against what production answered.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use xdpcopy_testbed::{
    bins,
    capture::{self, Tcpdump},
    servers::{Nginx, SlowBackend},
    stats,
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);
const SLOW_MS: u64 = 2_500;

fn online_http() -> SocketAddr {
    SocketAddr::new(addr::ONLINE.into(), 80)
}

fn target_http() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 8080)
}

struct Bed {
    tb: Testbed,
    online: Nginx,
    target: Nginx,
    _backends: [SlowBackend; 2],
    _intercept: Process,
}

fn bed() -> Bed {
    let tb = Testbed::new().unwrap();
    let backend = |host, name| {
        let at = SocketAddr::from(([127, 0, 0, 1], 9000));
        SlowBackend::start(&tb, host, name, at, 20, &[("/slow/", SLOW_MS)]).unwrap()
    };
    let backends = [backend(Host::Online, "online-backend"), backend(Host::Target, "target-backend")];
    let online = Nginx::start_proxy(&tb, Host::Online, "online-nginx", online_http(), backends[0].addr).unwrap();
    let target = Nginx::start_proxy(&tb, Host::Target, "target-nginx", target_http(), backends[1].addr).unwrap();
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target_http().to_string(), "--stats-interval", "1"]);
    let mut intercept = tb.start("intercept", cmd).unwrap();
    intercept.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    Bed { tb, online, target, _backends: backends, _intercept: intercept }
}

/// Every kind of client at once: short GETs, keep-alive sessions, pipelined GETs (ten in one
/// segment), clients that reset once they have their answer (some of them slow answers), large
/// POSTs and slow GETs. Returns the number of requests; production answered each with 200.
fn clients(tb: &Testbed, tag: &str) -> usize {
    let server = online_http();
    let tag = tag.to_owned();
    tb.client
        .run(move || {
            let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let mut statuses = Vec::new();
            std::thread::scope(|s| {
                let slow: Vec<_> = (0..2)
                    .map(|i| {
                        let tag = &tag;
                        s.spawn(move || {
                            [
                                traffic::http_get(server, &format!("/slow/{tag}/get/{i}")).unwrap(),
                                traffic::http_get_then_reset(server, &format!("/slow/{tag}/reset/{i}")).unwrap(),
                            ]
                        })
                    })
                    .collect();
                for i in 0..8 {
                    statuses.push(traffic::http_get(server, &format!("/{tag}/short/{i}")).unwrap());
                }
                for k in 0..2 {
                    let paths: Vec<String> = (0..5).map(|i| format!("/{tag}/keepalive/{k}/{i}")).collect();
                    statuses.extend(traffic::http_keepalive(server, &paths).unwrap());
                }
                for k in 0..2 {
                    let paths: Vec<String> = (0..10).map(|i| format!("/{tag}/pipelined/{k}/{i}")).collect();
                    statuses.extend(traffic::http_pipelined(server, &paths).unwrap());
                }
                for i in 0..6 {
                    statuses.push(traffic::http_get_then_reset(server, &format!("/{tag}/reset/{i}")).unwrap());
                }
                for i in 0..3 {
                    statuses.push(traffic::http_post(server, &format!("/{tag}/upload/{i}"), &body).unwrap());
                }
                for t in slow {
                    statuses.extend(t.join().unwrap());
                }
            });
            assert!(statuses.iter().all(|&s| s == 200), "production answered every client: {statuses:?}");
            statuses.len()
        })
        .unwrap()
}

/// (request line, status) → how many times, as nginx logged them.
fn answers(n: &Nginx) -> BTreeMap<(String, u16), usize> {
    let mut m = BTreeMap::new();
    for a in n.answers() {
        *m.entry(a).or_default() += 1;
    }
    m
}

fn record(b: &Bed) -> (PathBuf, usize) {
    let dump = Tcpdump::start(&b.tb, Host::Client, iface::CLIENT_TO_ONLINE, "tcp port 80", "clients").unwrap();
    let n = clients(&b.tb, "rec");
    (dump.finish().unwrap(), n)
}

/// Replays `pcap` and returns the copier, finished, and its JSON summary.
fn replay(b: &Bed, pcap: &Path, extra: &[&str]) -> (Process, serde_json::Value) {
    let json = b.tb.dir().join(format!("summary-{}.json", rand_suffix()));
    let mut cmd = b.tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{}", target_http()), "-s", &addr::ASSIST_CONTROL.to_string()])
        .args(["-i", &pcap.to_string_lossy(), "--stats-interval", "1", "--summary-json", &json.to_string_lossy()])
        .args(extra);
    let mut copier = b.tb.start("copier", cmd).unwrap();
    let status = copier.wait_timeout(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{}", copier.describe());
    let summary = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (copier, summary)
}

/// Distinct file names for the summaries of one test's replays.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn assert_answered_all(summary: &serde_json::Value, copier: &Process) {
    let t = &summary["targets"][0];
    assert_eq!(t["requests_unanswered"], 0, "{summary:#}\n{}", copier.describe());
    assert_eq!(t["requests_answered_short"], 0, "{summary:#}");
    assert_eq!(t["answer_timeouts"], 0, "{summary:#}");
    assert!(t["latency_us"]["target"]["max"].as_u64().unwrap() >= SLOW_MS * 1000, "slow answers measured");
    assert!(t["latency_us"]["production"]["max"].as_u64().unwrap() >= SLOW_MS * 1000, "{summary:#}");
}

/// (request line, length with the body) of every logged request, sorted.
fn lengths(n: &Nginx) -> Vec<(String, u64)> {
    let mut e = n.entries();
    e.sort();
    e
}

/// A live copier on interface `on` of the online host (`extra` flags), attached and connected
/// to the intercept.
fn live_copier(b: &Bed, on: &str, extra: &[&str]) -> Process {
    let mut cmd = b.tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{}", target_http()), "-s", &addr::ASSIST_CONTROL.to_string()])
        .args(["--iface", on, "--stats-interval", "0.5"])
        .args(extra);
    let mut copier = b.tb.start("copier", cmd).unwrap();
    copier.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();
    copier
}

/// Waits (at most 20 s) until the test server answered `n` requests and the copier has the
/// answers (a stop cuts those still on their way short, as unanswered), stops the copier,
/// checks that the test server's log equals production's (request, status, length with the
/// body), and returns the copier's summary.
fn stop_and_compare(b: &Bed, mut copier: Process, n: usize) -> (Process, stats::Stats) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b.target.answers().len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every exchange the copier started is judged: none waits for an answer on its way.
    let judged = |s: &stats::Stats| {
        let judged = s.get("answered") + s.get("answered_short") + s.get("unanswered") + s.get("unanswered_online");
        s.get("requests") > 0 && judged >= s.get("requests")
    };
    let seen = copier.stdout().lines().count();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !copier.stdout().lines().skip(seen).filter_map(stats::parse).any(|s| judged(&s))
        && std::time::Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    assert_eq!(answers(&b.target), answers(&b.online), "{}", copier.describe());
    assert_eq!(lengths(&b.target), lengths(&b.online), "the same requests, bodies included");
    let summary = stats::last(&copier.stdout()).unwrap();
    (copier, summary)
}

#[test]
fn a_replay_leaves_the_test_servers_log_equal_to_productions() {
    let b = bed();
    let (pcap, n) = record(&b);
    assert_eq!(b.online.answers().len(), n);
    let (copier, summary) = replay(&b, &pcap, &[]);
    assert_eq!(answers(&b.target), answers(&b.online), "{}", copier.describe());
    assert_eq!(lengths(&b.target), lengths(&b.online), "the same requests, bodies included");
    assert_answered_all(&summary, &copier);
    // Exchanges, not requests: ten pipelined GETs in one segment are one exchange.
    let t = &summary["targets"][0];
    assert_eq!(summary["requests_answered"], t["requests_answered"]);
    let judged = t["requests_answered"].as_u64().unwrap() + t["requests_unanswered_online"].as_u64().unwrap();
    assert_eq!(judged, summary["requests_sent"].as_u64().unwrap(), "every exchange sent was judged: {summary:#}");
}

#[test]
fn ten_copies_at_maximum_speed_are_each_answered_as_production_was() {
    let b = bed();
    let (pcap, n) = record(&b);
    let (copier, summary) = replay(&b, &pcap, &["-n", "10", "-a", "1000000"]);
    let expected: BTreeMap<_, _> = answers(&b.online).into_iter().map(|(k, v)| (k, v * 10)).collect();
    assert_eq!(answers(&b.target), expected, "{}", copier.describe());
    assert_eq!(b.target.answers().len(), 10 * n);
    assert_eq!(summary["targets"][0]["requests_unanswered"], 0, "{summary:#}");
}

/// Ten immediate reruns into one test server, with 1 % of its segments lost: every run is as
/// complete as the first (the test server's leftover connections and TIME_WAIT state neither
/// drop a rerun's segments nor keep its SYNs from opening).
#[test]
fn ten_reruns_into_one_target_with_loss_are_each_complete() {
    let b = bed();
    let (pcap, n) = record(&b);
    b.tb.lose(Host::Target, 8080, 1).unwrap();
    let per_run = answers(&b.online);
    for run in 1..=10 {
        let (copier, _) = replay(&b, &pcap, &["-a", "5"]);
        let expected: BTreeMap<_, _> = per_run.iter().map(|(k, v)| (k.clone(), v * run)).collect();
        assert_eq!(answers(&b.target), expected, "run {run}\n{}", copier.describe());
        assert_eq!(b.target.answers().len(), n * run);
    }
}

#[test]
fn five_percent_loss_still_ends_every_exchange_as_production_did() {
    let b = bed();
    let (pcap, _) = record(&b);
    b.tb.lose(Host::Target, 8080, 5).unwrap();
    let (copier, summary) = replay(&b, &pcap, &["-a", "5"]);
    assert_eq!(answers(&b.target), answers(&b.online), "{}", copier.describe());
    assert_eq!(summary["targets"][0]["requests_unanswered"], 0, "{summary:#}");
}

#[test]
fn live_clients_that_reset_after_a_slow_answer_are_answered_on_the_test_server_too() {
    let b = bed();
    let copier = live_copier(&b, iface::ONLINE_TO_CLIENT, &[]);
    let n = clients(&b.tb, "live");
    let (copier, _) = stop_and_compare(&b, copier, n);
    let line = copier.stdout().lines().find(|l| l.starts_with("copier target ")).map(str::to_owned);
    let line = line.unwrap_or_else(|| panic!("a target line\n{}", copier.describe()));
    assert!(line.contains(" unanswered=0 "), "{line}");
}

/// Jumbo frames (an AWS VPC's MTU 9001, rounded): the copy-mode program takes frames that span
/// several buffers whole, and the copier cuts the test server's 8960-byte MSS to what one
/// AF_XDP frame carries. Large POSTs arrive with every byte, each answered as production did.
#[test]
fn live_copy_at_mtu_9000_takes_jumbo_frames_whole() {
    let b = bed();
    b.tb.production_mtu(9000).unwrap();
    // The test server's SYN-ACKs say MSS 8960, as on a host whose every link is jumbo (its
    // replies still leave through the assistant host's 1500-byte link).
    let via = addr::ASSIST.to_string();
    b.tb.target.ip(&["route", "change", addr::CLIENT_NET, "via", &via, "advmss", "8960"]).unwrap();
    let copier = live_copier(&b, iface::ONLINE_TO_CLIENT, &["--tx", "xdp"]);
    let dump = Tcpdump::start(&b.tb, Host::Client, iface::CLIENT_TO_ONLINE, "tcp port 80", "clients").unwrap();
    let n = clients(&b.tb, "jumbo");
    let largest = capture::packets(&dump.finish().unwrap()).unwrap().iter().map(Vec::len).max().unwrap();
    assert!(largest > 8000, "the clients sent jumbo frames (largest {largest} bytes)");
    let (copier, summary) = stop_and_compare(&b, copier, n);
    assert_eq!(summary.totals["truncated"], 0, "{}", copier.describe());
    assert!(summary.totals["copied"] > 0);
    assert_eq!(summary.totals["tx_errors"], 0, "no segment too large for a frame: {}", copier.describe());
}

/// Mirror mode at MTU 9000: a jumbo frame arrives in several buffers, which AF_XDP does not
/// take here, so the program copies it through the capture ring; large POSTs arrive whole.
#[test]
fn mirror_mode_at_mtu_9000_replays_jumbo_frames_whole() {
    let b = bed();
    b.tb.production_mtu(9000).unwrap();
    b.tb.mirror_client_link().unwrap();
    for ifname in [iface::ONLINE_MIRROR_FEED, iface::ONLINE_MIRROR] {
        b.tb.online.ip(&["link", "set", ifname, "mtu", "9000"]).unwrap();
    }
    let copier = live_copier(&b, iface::ONLINE_MIRROR, &["--mode", "mirror", "--mirror-other", "drop"]);
    let n = clients(&b.tb, "mirror-jumbo");
    let (copier, summary) = stop_and_compare(&b, copier, n);
    assert!(summary.totals["copied"] > 0, "jumbo frames came through the ring: {}", copier.describe());
    assert!(summary.totals["redirected"] > 0, "the rest through AF_XDP");
    assert_eq!(summary.totals["truncated"], 0, "{}", copier.describe());
}

/// Every link at MTU 9000, the assistant host's included: the test server's large answers
/// arrive there as jumbo frames in several buffers, which the intercept copies through its ring
/// (AF_XDP takes the rest), so the copier sees every answer whole and paces by it.
#[test]
fn an_assistant_host_at_mtu_9000_takes_jumbo_replies_whole() {
    let tb = Testbed::new().unwrap();
    tb.production_mtu(9000).unwrap();
    for (ns, ifname) in [(&tb.target, iface::TARGET_TO_ASSIST), (tb.assist(), iface::ASSIST_TO_TARGET)] {
        ns.ip(&["link", "set", ifname, "mtu", "9000"]).unwrap();
    }
    let files = tb.dir().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("page"), vec![b'x'; 100_000]).unwrap();
    let locations =
        format!("location / {{ return 200 \"ok\\n\"; }}\n        location /big/ {{ alias {}/; }}", files.display());
    let online = Nginx::start_with(&tb, Host::Online, "online-nginx", online_http(), &locations).unwrap();
    let target = Nginx::start_with(&tb, Host::Target, "target-nginx", target_http(), &locations).unwrap();
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target_http().to_string(), "--stats-interval", "0.5"]);
    let mut intercept = tb.start("intercept", cmd).unwrap();
    intercept.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{}", target_http()), "-s", &addr::ASSIST_CONTROL.to_string()]).args([
        "--iface",
        iface::ONLINE_TO_CLIENT,
        "--stats-interval",
        "0.5",
    ]);
    let mut copier = tb.start("copier", cmd).unwrap();
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    let server = online_http();
    tb.client
        .run(move || {
            for i in 0..5 {
                assert_eq!(traffic::http_get(server, &format!("/big/page?{i}")).unwrap(), 200);
            }
            let paths: Vec<String> = (0..5).map(|i| format!("/big/page?keepalive-{i}")).collect();
            assert_eq!(traffic::http_keepalive(server, &paths).unwrap(), vec![200; 5]);
        })
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while target.answers().len() < 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1)); // the last answers' facts
    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    assert_eq!(answers(&target), answers(&online), "{}", copier.describe());
    let summary = stats::last(&copier.stdout()).unwrap();
    assert_eq!(
        (summary.totals["answered"], summary.totals["answered_short"], summary.totals["unanswered"]),
        (10, 0, 0),
        "every 100 KB answer seen whole, as production's: {}",
        copier.describe()
    );
    intercept.signal(libc::SIGINT).unwrap();
    assert!(intercept.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", intercept.describe());
    let stolen = stats::last(&intercept.stdout()).unwrap();
    assert!(stolen.totals["stolen"] > 0, "jumbo replies came through the ring: {}", intercept.describe());
    assert!(stolen.totals["redirected"] > 0, "the rest through AF_XDP");
    assert_eq!((stolen.totals["lost"], stolen.totals["truncated"]), (0, 0), "{}", intercept.describe());
}
