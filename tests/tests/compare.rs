//! The comparison end to end: a real capture of production's nginx and redis replayed to a
//! candidate that answers some requests differently; the report must name exactly those.

use std::{net::SocketAddr, path::Path, time::Duration};

use xdpcopy_testbed::{
    bins,
    capture::Tcpdump,
    servers::{Nginx, Redis},
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

/// Production's answers; the candidate answers /broken/ with 500 and /changed/ with another
/// body of the same length.
const PRODUCTION: &str = r#"location /fine/ { return 200 "fine\n"; }
        location /broken/ { return 200 "works\n"; }
        location /changed/ { return 200 "original\n"; }"#;
const CANDIDATE: &str = r#"location /fine/ { return 200 "fine\n"; }
        location /broken/ { return 500 "works\n"; }
        location /changed/ { return 200 "altered!\n"; }"#;

fn online(port: u16) -> SocketAddr {
    SocketAddr::new(addr::ONLINE.into(), port)
}

fn target(port: u16) -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), port)
}

fn redis_cli(tb: &Testbed, host: Host, at: SocketAddr, args: &[&str]) -> String {
    let (ip, port) = (at.ip().to_string(), at.port().to_string());
    let out = tb.host(host).exec("redis-cli", &[&["-h", &ip, "-p", &port][..], args].concat()).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn start_intercept(tb: &Testbed) -> Process {
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &format!("{},{}", target(8080), target(6379))]);
    cmd.args(["--listen", &SocketAddr::new(addr::ASSIST_CONTROL.into(), 36524).to_string(), "--stats-interval", "1"]);
    let mut p = tb.start("intercept", cmd).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    p
}

fn replay(tb: &Testbed, pcap: &Path, report: &Path) -> Process {
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{},6379-{}", target(8080), target(6379)), "-s", &addr::ASSIST_CONTROL.to_string()])
        .args(["-i", &pcap.to_string_lossy(), "--report", &report.to_string_lossy(), "--ignore-header", "Date"]);
    tb.start("copier", cmd).unwrap()
}

#[test]
fn a_candidate_that_answers_some_requests_differently_is_named_for_exactly_those() {
    let tb = Testbed::new().unwrap();
    let _production = Nginx::start_with(&tb, Host::Online, "online-nginx", online(80), PRODUCTION).unwrap();
    let candidate = Nginx::start_with(&tb, Host::Target, "target-nginx", target(8080), CANDIDATE).unwrap();
    let _online_redis = Redis::start(&tb, Host::Online, "online-redis", online(6379)).unwrap();
    let _target_redis = Redis::start(&tb, Host::Target, "target-redis", target(6379)).unwrap();
    // One key holds another value on the candidate's redis.
    for (host, at, value) in [(Host::Online, online(6379), "v1"), (Host::Target, target(6379), "v2")] {
        assert_eq!(redis_cli(&tb, host, at, &["SET", "k", value]), "OK");
        assert_eq!(redis_cli(&tb, host, at, &["SET", "same", "s"]), "OK");
    }
    let _intercept = start_intercept(&tb);

    let dump =
        Tcpdump::start(&tb, Host::Client, iface::CLIENT_TO_ONLINE, "tcp port 80 or tcp port 6379", "clients").unwrap();
    tb.client
        .run(|| {
            for s in ["a", "b"] {
                let paths: Vec<String> =
                    ["fine", "broken", "changed", "fine"].iter().map(|p| format!("/{p}/{s}")).collect();
                assert_eq!(traffic::http_keepalive(online(80), &paths).unwrap(), vec![200; 4]);
            }
            for p in ["fine", "broken", "changed"] {
                for i in 0..3 {
                    assert_eq!(traffic::http_get(online(80), &format!("/{p}/{i}")).unwrap(), 200);
                }
            }
        })
        .unwrap();
    for key in ["k", "same", "k"] {
        assert!(!redis_cli(&tb, Host::Client, online(6379), &["GET", key]).is_empty());
    }
    let pcap = dump.finish().unwrap();

    let report_dir = tb.dir().join("report");
    let mut copier = replay(&tb, &pcap, &report_dir);
    let status = copier.wait_timeout(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "{}", copier.describe());
    // What the candidate answered, from its own log.
    let answers = candidate.answers();
    assert_eq!(answers.len(), 17, "{answers:?}\n{}", copier.describe());
    assert!(answers.iter().all(|(r, s)| (*s == 500) == r.contains("/broken/")), "{answers:?}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let of = |port: u16| {
        let t = report["targets"].as_array().unwrap().iter().find(|t| t["target"] == target(port).to_string());
        t.unwrap_or_else(|| panic!("no target {port} in {report:#}"))["comparison"].clone()
    };
    let http = of(8080);
    assert_eq!((http["compared"].as_u64(), http["not_compared"].as_u64()), (Some(17), Some(0)), "{http:#}");
    assert_eq!(http["different"], 10, "{http:#}");
    let kinds = &http["different_by_kind"];
    assert_eq!(
        (kinds["status"].as_u64(), kinds["body"].as_u64(), kinds["headers"].as_u64()),
        (Some(5), Some(5), Some(0))
    );
    for (group, compared, different) in [("GET /fine/", 7, 0), ("GET /broken/", 5, 5), ("GET /changed/", 5, 5)] {
        let g = http["by_request"].as_array().unwrap().iter().find(|g| g["request"] == group).unwrap();
        assert_eq!((g["compared"].as_u64(), g["different"].as_u64()), (Some(compared), Some(different)), "{group}");
    }
    for sample in http["samples"].as_array().unwrap() {
        let request = sample["request"].as_str().unwrap();
        let kind = if request.contains("/broken/") { "status" } else { "body" };
        assert!(!request.contains("/fine/"), "{sample}");
        assert_eq!(sample["kinds"], serde_json::json!([kind]), "{sample}");
    }
    let redis = of(6379);
    assert_eq!((redis["compared"].as_u64(), redis["different"].as_u64()), (Some(3), Some(2)), "{redis:#}");
    assert_eq!(redis["different_by_kind"]["value"], 2);
    assert!(redis["samples"].as_array().unwrap().iter().all(|s| s["request"] == "GET k"), "{redis:#}");
    // The summary names the counts too.
    assert!(copier.stdout().contains("compared=17 equal=7 different=10 (status=5 body=5)"), "{}", copier.describe());
}
