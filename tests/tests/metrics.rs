//! `--metrics` on both binaries, scraped by a real Prometheus server during a live copy: its
//! HTTP API returns what the copier and the intercept counted, and `promtool check metrics`
//! accepts what they serve.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use xdpcopy_testbed::{
    bins,
    servers::Nginx,
    stats,
    topology::{addr, iface},
    traffic, Host, Netns, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

/// A plain HTTP GET from inside `ns`: the body, or None if nothing answered.
fn get(ns: &Netns, addr: SocketAddr, path: &str) -> Option<String> {
    let path = path.to_owned();
    ns.run(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
    })
    .unwrap()
    .ok()
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The value of a PromQL query with one result, or None.
fn query(ns: &Netns, prometheus: SocketAddr, q: &str) -> Option<f64> {
    let body = get(ns, prometheus, &format!("/api/v1/query?query={}", encode(q)))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_both_binaries_during_a_live_copy() {
    let tb = Testbed::new().unwrap();
    let online_http = SocketAddr::new(addr::ONLINE.into(), 80);
    let target_http = SocketAddr::new(addr::TARGET.into(), 8080);
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_http).unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http).unwrap();
    let intercept_metrics = SocketAddr::new(addr::ASSIST_CONTROL.into(), 9101);
    let copier_metrics = SocketAddr::from(([127, 0, 0, 1], 9100));

    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target_http.to_string()])
        .args(["--metrics", &intercept_metrics.to_string()]);
    let mut intercept = tb.start("intercept", cmd).unwrap();
    intercept.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{target_http}"), "-s", &addr::ASSIST_CONTROL.to_string()]).args([
        "--iface",
        iface::ONLINE_TO_CLIENT,
        "--stats-interval",
        "0.5",
        "--metrics",
        &copier_metrics.to_string(),
    ]);
    let mut copier = tb.start("copier", cmd).unwrap();
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    // Prometheus on the online host, scraping the copier there and the intercept over the
    // control link, every half second.
    let dir = tb.dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: xdpcopy\n    static_configs:\n      \
             - targets: ['{copier_metrics}', '{intercept_metrics}']\n"
        ),
    )
    .unwrap();
    let prometheus = SocketAddr::from(([127, 0, 0, 1], 9090));
    let mut cmd = tb.command(Host::Online, "prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={prometheus}"));
    let prometheus_process = tb.start("prometheus", cmd).unwrap();
    let ready = Instant::now() + Duration::from_secs(60);
    while get(&tb.online, prometheus, "/-/ready").is_none() {
        assert!(Instant::now() < ready, "Prometheus not ready after a minute\n{}", prometheus_process.describe());
        std::thread::sleep(Duration::from_millis(200));
    }

    tb.client
        .run(move || {
            for i in 0..30 {
                assert_eq!(traffic::http_get(online_http, &format!("/metrics-test/{i}")).unwrap(), 200);
            }
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while target.requests().len() < 30 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(target.requests().len(), online.requests().len());

    // What Prometheus stored, once it has scraped the final counts (each target is scraped on
    // its own schedule).
    let eventually = |q: &str, ok: &dyn Fn(f64) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = query(&tb.online, prometheus, q);
            if v.is_some_and(ok) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let answered = format!("xdpcopy_copier_answered_total{{target=\"{target_http}\"}}");
    assert_eq!(eventually(&answered, &|v| v == 30.0), Some(30.0), "{answered}\n{}", copier.describe());
    assert_eq!(eventually("xdpcopy_copier_sessions_total", &|v| v == 30.0), Some(30.0));
    let per_worker = "xdpcopy_copier_worker_sessions_total{worker=\"0\"}";
    assert_eq!(eventually(per_worker, &|v| v == 30.0), Some(30.0), "{per_worker}");
    assert!(eventually("xdpcopy_copier_worker_sent_total", &|v| v >= 90.0).is_some_and(|v| v >= 90.0));
    assert_eq!(eventually("xdpcopy_copier_intercepts", &|v| v == 1.0), Some(1.0));
    assert_eq!(eventually("xdpcopy_intercept_copiers", &|v| v == 1.0), Some(1.0), "{}", intercept.describe());
    let routed = eventually("xdpcopy_intercept_routed_total", &|v| v >= 90.0);
    assert!(routed.is_some_and(|v| v >= 90.0), "SYN-ACKs and answers routed: {routed:?}");
    let p50 =
        format!("histogram_quantile(0.5, xdpcopy_copier_target_first_byte_seconds_bucket{{target=\"{target_http}\"}})");
    assert!(eventually(&p50, &|s| s > 0.0 && s < 1.0).is_some_and(|s| s > 0.0 && s < 1.0), "{p50}");

    for (ns, at) in [(&tb.online, copier_metrics), (&tb.online, intercept_metrics)] {
        let text = get(ns, at, "/metrics").unwrap_or_else(|| panic!("nothing serves {at}"));
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(text.as_bytes());
        assert!(check.0, "promtool check metrics on {at}: {}\n{text}", check.1.remove(0));
    }
    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
}

/// Runs a command with `input` on its standard input: (success, [its stderr and stdout]).
trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, Vec<String>);
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, Vec<String>) {
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        (out.status.success(), vec![text])
    }
}
