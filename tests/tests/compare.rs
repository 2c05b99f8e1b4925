//! The comparison end to end: a real capture of production's nginx and redis replayed at once
//! to a baseline (the same build), a candidate that answers some requests differently, and
//! another run of the same build. Every nginx stamps each answer with its own Date and a random
//! X-Request-Id; the report must name exactly the candidate's changed exchanges, and none of
//! the same build's.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use xdpcopy_testbed::{
    bins,
    capture::Tcpdump,
    servers::{Nginx, Redis},
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

/// Production's build (and the baseline's); the candidate answers /broken/ with 500 and
/// /changed/ with another body of the same length.
const STABLE: &str = r#"add_header X-Request-Id $request_id always;
        location /fine/ { return 200 "fine\n"; }
        location /broken/ { return 200 "works\n"; }
        location /changed/ { return 200 "original\n"; }"#;
const CANDIDATE: &str = r#"add_header X-Request-Id $request_id always;
        location /fine/ { return 200 "fine\n"; }
        location /broken/ { return 500 "works\n"; }
        location /changed/ { return 200 "altered!\n"; }"#;

const BASELINE_PORT: u16 = 8080;
const CANDIDATE_PORT: u16 = 8081;
const SAME_BUILD_PORT: u16 = 8082;
/// Redis: the baseline holds production's value of key k, the candidate another.
const REDIS_SAME: u16 = 6379;
const REDIS_OTHER: u16 = 6380;

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

/// report.html as a real browser renders it: headless Chromium's DOM after layout, and a
/// screenshot of the page. No network is reachable from the page's point of view: it needs none.
fn render(page: &Path, dir: &Path) -> (String, u64) {
    let shot = dir.join("report.png");
    let chromium = |extra: &[String]| {
        let profile = format!("--user-data-dir={}", dir.join("chromium-profile").display());
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", &profile])
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("chromium is installed by `cargo xtask setup`");
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dom = String::from_utf8(chromium(&["--dump-dom".into()]).stdout).unwrap();
    chromium(&[format!("--screenshot={}", shot.display()), "--window-size=1280,2400".into()]);
    if let Some(keep) = std::env::var_os("XDPCOPY_KEEP_REPORT") {
        std::fs::copy(&shot, keep).expect("copying the screenshot");
    }
    (dom, std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0))
}

fn start_intercept(tb: &Testbed) -> Process {
    let targets: Vec<String> = [BASELINE_PORT, CANDIDATE_PORT, SAME_BUILD_PORT, REDIS_SAME, REDIS_OTHER]
        .map(|p| target(p).to_string())
        .to_vec();
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &targets.join(",")]);
    cmd.args(["--listen", &SocketAddr::new(addr::ASSIST_CONTROL.into(), 36524).to_string(), "--stats-interval", "1"]);
    let mut p = tb.start("intercept", cmd).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    p
}

fn replay(tb: &Testbed, pcap: &Path, report: &Path) -> Process {
    let http = [BASELINE_PORT, CANDIDATE_PORT, SAME_BUILD_PORT].map(|p| format!("80-{}", target(p)));
    let redis = [REDIS_SAME, REDIS_OTHER].map(|p| format!("6379-{}", target(p)));
    let mappings = [http.join(","), redis.join(",")].join(",");
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &mappings, "-s", &addr::ASSIST_CONTROL.to_string(), "-i", &pcap.to_string_lossy()]).args([
        "--report",
        &report.to_string_lossy(),
        "--baseline",
        &target(BASELINE_PORT).to_string(),
    ]);
    tb.start("copier", cmd).unwrap()
}

#[test]
fn a_candidate_is_named_for_exactly_the_exchanges_it_answers_differently_from_the_baseline() {
    let tb = Testbed::new().unwrap();
    let _production = Nginx::start_with(&tb, Host::Online, "online-nginx", online(80), STABLE).unwrap();
    let _baseline = Nginx::start_with(&tb, Host::Target, "baseline", target(BASELINE_PORT), STABLE).unwrap();
    let candidate = Nginx::start_with(&tb, Host::Target, "candidate", target(CANDIDATE_PORT), CANDIDATE).unwrap();
    let _same_build = Nginx::start_with(&tb, Host::Target, "same-build", target(SAME_BUILD_PORT), STABLE).unwrap();
    let _online_redis = Redis::start(&tb, Host::Online, "online-redis", online(6379)).unwrap();
    let _same_redis = Redis::start(&tb, Host::Target, "redis-same", target(REDIS_SAME)).unwrap();
    let _other_redis = Redis::start(&tb, Host::Target, "redis-other", target(REDIS_OTHER)).unwrap();
    for (host, at, value) in [
        (Host::Online, online(6379), "v1"),
        (Host::Target, target(REDIS_SAME), "v1"),
        (Host::Target, target(REDIS_OTHER), "v2"),
    ] {
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
    // A second later every answer's Date differs from production's too.
    std::thread::sleep(Duration::from_millis(1100));

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
        t.unwrap_or_else(|| panic!("no target {port} in {report:#}")).clone()
    };
    // The baseline differs from production in every answer's Date and X-Request-Id: noise.
    let baseline = of(BASELINE_PORT);
    assert_eq!(baseline["baseline"], true);
    let noise = &baseline["comparison"];
    assert_eq!((noise["compared"].as_u64(), noise["different"].as_u64()), (Some(17), Some(17)), "{noise:#}");
    assert_eq!(noise["samples"][0]["headers"], serde_json::json!(["date", "x-request-id"]), "{noise:#}");

    let http = &of(CANDIDATE_PORT)["comparison"];
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
        assert_eq!(
            (&sample["kinds"], &sample["headers"]),
            (&serde_json::json!([kind]), &serde_json::json!([])),
            "{sample}"
        );
    }
    // Another run of the stable build: its own dates and ids, and nothing else.
    let same = &of(SAME_BUILD_PORT)["comparison"];
    assert_eq!((same["compared"].as_u64(), same["different"].as_u64()), (Some(17), Some(0)), "{same:#}");

    let redis_same = &of(REDIS_SAME)["comparison"];
    assert_eq!(
        (redis_same["compared"].as_u64(), redis_same["different"].as_u64()),
        (Some(3), Some(0)),
        "{redis_same:#}"
    );
    let redis = &of(REDIS_OTHER)["comparison"];
    assert_eq!((redis["compared"].as_u64(), redis["different"].as_u64()), (Some(3), Some(2)), "{redis:#}");
    assert_eq!(redis["different_by_kind"]["value"], 2);
    assert!(redis["samples"].as_array().unwrap().iter().all(|s| s["request"] == "GET k"), "{redis:#}");
    // The page shows the same figures, as Chromium renders it.
    let (dom, screenshot) = render(&report_dir.join("report.html"), tb.dir());
    assert!(screenshot > 10_000, "a screenshot of {screenshot} bytes shows nothing");
    assert_eq!(dom.matches("<svg class=\"latency\"").count(), 5, "a latency plot per target");
    assert_eq!(dom.matches("<svg class=\"differences\"").count(), 5, "a differences plot per target");
    let row = |port: u16| {
        let start = dom.find(&format!("<a href=\"#target-{}\">", target(port))).unwrap_or_else(|| panic!("{dom}"));
        dom[start..].split("</tr>").next().unwrap().to_owned()
    };
    assert!(
        row(CANDIDATE_PORT).contains("<td>17</td><td>7</td><td class=\"different\">10</td>"),
        "{}",
        row(CANDIDATE_PORT)
    );
    assert!(row(CANDIDATE_PORT).contains("status 5, body 5"), "{}", row(CANDIDATE_PORT));
    assert!(row(SAME_BUILD_PORT).contains("<td>17</td><td>17</td><td>0</td>"), "{}", row(SAME_BUILD_PORT));
    assert!(row(BASELINE_PORT).contains("(baseline)"));
    let candidate_section =
        dom.split("<section").find(|s| s.contains(&format!("id=\"target-{}\"", target(CANDIDATE_PORT)))).unwrap();
    assert!(candidate_section.contains("GET /broken/</text>") && candidate_section.contains("5 of 5</text>"));
    assert_eq!(candidate_section.matches("<tr class=\"sample\">").count(), 10);
    assert!(candidate_section.contains("HTTP/1.1 500 Internal Server Error"), "side by side: the target's 500");
    // The summary names the counts too.
    let out = copier.stdout();
    let line =
        |port: u16| out.lines().find(|l| l.starts_with(&format!("copier target {}", target(port)))).unwrap_or("");
    assert!(line(BASELINE_PORT).contains("(baseline)"), "{out}");
    assert!(
        line(CANDIDATE_PORT).ends_with("compared=17 equal=7 different=10 (status=5 body=5) not_compared=0"),
        "{out}"
    );
    assert!(line(SAME_BUILD_PORT).ends_with("compared=17 equal=17 different=0 not_compared=0"), "{out}");
}
