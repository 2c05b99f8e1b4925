//! The copier end to end on the namespace test bed: real clients, real nginx servers, the real
//! intercept, and sessions replayed through real kernels.

use std::{collections::BTreeSet, net::SocketAddr, path::Path, time::Duration};

use xdpcopy_testbed::{
    bins,
    capture::Tcpdump,
    servers::Nginx,
    stats,
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

fn online_http() -> SocketAddr {
    SocketAddr::new(addr::ONLINE.into(), 80)
}

fn target_http() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 8080)
}

fn control() -> SocketAddr {
    SocketAddr::new(addr::ASSIST_CONTROL.into(), 36524)
}

fn start_intercept(tb: &Testbed, name: &str) -> Process {
    let mut cmd = tb.command(Host::Assist, bins::xdpcopy("intercept"));
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target_http().to_string()])
        .args(["--listen", &control().to_string(), "--stats-interval", "1"]);
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

fn request_set(lines: Vec<String>) -> BTreeSet<String> {
    lines.into_iter().collect()
}

#[test]
fn a_captured_pcap_replays_every_request_to_the_target() {
    let tb = Testbed::new().unwrap();
    let online = Nginx::start(&tb, Host::Online, "online-nginx", online_http()).unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let _intercept = start_intercept(&tb, "intercept");

    let dump = Tcpdump::start(&tb, Host::Client, iface::CLIENT_TO_ONLINE, "tcp port 80", "clients").unwrap();
    tb.client
        .run(|| {
            for i in 0..20 {
                assert_eq!(traffic::http_get(online_http(), &format!("/short/{i}")).unwrap(), 200);
            }
            for k in 0..3 {
                let paths: Vec<String> = (0..5).map(|i| format!("/keepalive/{k}/{i}")).collect();
                assert_eq!(traffic::http_keepalive(online_http(), &paths).unwrap(), vec![200; 5]);
            }
        })
        .unwrap();
    let pcap = dump.finish().unwrap();
    assert_eq!(online.requests().len(), 35);

    let mut copier = replay(&tb, &pcap, &[]);
    let status = copier.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", copier.describe());
    let summary = stats::last(&copier.stdout()).expect("a summary line");
    assert!(summary.summary, "{}", copier.describe());
    assert_eq!(request_set(target.requests()), request_set(online.requests()), "{}", copier.describe());
    assert_eq!(target.requests().len(), 35, "each request once");
    assert_eq!(summary.get("completed"), 23, "{}", copier.describe());
}
