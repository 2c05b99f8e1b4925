//! IPv6 end to end, and nothing else: clients, production, the test server, the intercept's
//! listener and the control link all speak IPv6 only (the test bed is dual-stack; every address
//! here is its IPv6 one), with nginx and redis as servers.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xdpcopy_testbed::{
    bins,
    capture::Tcpdump,
    servers::{redis_command_counts, Nginx, Redis},
    stats,
    topology::{
        addr::{self, v6},
        iface,
    },
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

fn at(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(v6(ip)), port)
}

struct Bed {
    tb: Testbed,
    online: Nginx,
    target: Nginx,
    _intercept: Process,
}

/// Production and test nginx and redis on IPv6, and the intercept on its default listener
/// (which must take an IPv6 copier).
fn bed() -> Bed {
    let tb = Testbed::new().unwrap();
    let online = Nginx::start(&tb, Host::Online, "online-nginx", at(addr::ONLINE, 80)).unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", at(addr::TARGET, 8080)).unwrap();
    let targets = format!("{},{}", at(addr::TARGET, 8080), at(addr::TARGET, 6379));
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &targets, "--stats-interval", "1"]);
    let mut intercept = tb.start("intercept", cmd).unwrap();
    intercept.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    Bed { tb, online, target, _intercept: intercept }
}

/// `-x` for both services and `-s` as a bracketed IPv6 address without a port.
fn copier_args() -> Vec<String> {
    let map = format!("80-{},6379-{}", at(addr::TARGET, 8080), at(addr::TARGET, 6379));
    vec![
        "-x".into(),
        map,
        "-s".into(),
        format!("[{}]", v6(addr::ASSIST_CONTROL)),
        "--stats-interval".into(),
        "1".into(),
    ]
}

fn answers(n: &Nginx) -> BTreeSet<(String, u16)> {
    n.answers().into_iter().collect()
}

/// Short and keep-alive HTTP sessions, and pipelined redis SETs and GETs, to production.
fn client_traffic(tb: &Testbed, prefix: &str) {
    let online = at(addr::ONLINE, 80);
    let prefix = prefix.to_owned();
    tb.client
        .run(move || {
            for i in 0..10 {
                assert_eq!(traffic::http_get(online, &format!("/{prefix}/{i}")).unwrap(), 200);
            }
            let paths: Vec<String> = (0..5).map(|i| format!("/{prefix}-keepalive/{i}")).collect();
            assert_eq!(traffic::http_keepalive(online, &paths).unwrap(), vec![200; 5]);
        })
        .unwrap();
    let host = v6(addr::ONLINE).to_string();
    let args = ["-h", &host, "-p", "6379", "-n", "512", "-c", "2", "-P", "8", "-t", "set,get", "-q"];
    let bench = tb.client.exec("redis-benchmark", &args).unwrap();
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
}

fn redis_pair(tb: &Testbed) -> (Redis, Redis) {
    (
        Redis::start(tb, Host::Online, "online-redis", at(addr::ONLINE, 6379)).unwrap(),
        Redis::start(tb, Host::Target, "target-redis", at(addr::TARGET, 6379)).unwrap(),
    )
}

/// Waits until the test server logged `n` requests (or the time is up).
fn wait_for(target: &Nginx, n: usize, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while target.requests().len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_ipv6_capture_replays_http_and_redis_over_an_ipv6_control_link() {
    let Bed { tb, online, target, _intercept } = bed();
    let _redis = redis_pair(&tb);
    let dump = Tcpdump::start(&tb, Host::Client, iface::CLIENT_TO_ONLINE, "ip6 and tcp", "clients").unwrap();
    client_traffic(&tb, "v6");
    let pcap = dump.finish().unwrap();
    assert_eq!(online.requests().len(), 15);
    let online_redis = redis_command_counts(&tb, Host::Online, at(addr::ONLINE, 6379)).unwrap();
    assert_eq!(online_redis.get("set"), Some(&512));

    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(copier_args()).args(["-i", &pcap.to_string_lossy()]);
    let mut copier = tb.start("copier", cmd).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    assert!(copier.stderr().contains("AF_XDP transmit on to-target"), "{}", copier.describe());

    assert_eq!(answers(&target), answers(&online), "the test server answered as production: {}", copier.describe());
    assert_eq!(target.requests().len(), 15, "each request once");
    let target_redis = redis_command_counts(&tb, Host::Target, at(addr::TARGET, 6379)).unwrap();
    assert_eq!(target_redis, online_redis, "{}", copier.describe());
    let summary = stats::last(&copier.stdout()).unwrap();
    assert_eq!(summary.get("intercepts"), 1, "connected over IPv6: {}", copier.describe());
}

#[test]
fn live_ipv6_traffic_is_copied_while_production_answers_every_client() {
    let Bed { tb, online, target, _intercept } = bed();
    let _redis = redis_pair(&tb);
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(copier_args()).args(["--iface", iface::ONLINE_TO_CLIENT]);
    let mut copier = tb.start("copier", cmd).unwrap();
    copier.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    copier.wait_for_line(STARTUP, |l| stats::parse(l).is_some_and(|s| s.get("intercepts") == 1)).unwrap();

    client_traffic(&tb, "live-v6");
    assert_eq!(online.requests().len(), 15);
    wait_for(&target, 15, Duration::from_secs(15));
    let online_redis = redis_command_counts(&tb, Host::Online, at(addr::ONLINE, 6379)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut target_redis = redis_command_counts(&tb, Host::Target, at(addr::TARGET, 6379)).unwrap();
    while target_redis != online_redis && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        target_redis = redis_command_counts(&tb, Host::Target, at(addr::TARGET, 6379)).unwrap();
    }

    copier.signal(libc::SIGINT).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", copier.describe());
    assert_eq!(answers(&target), answers(&online), "the test server answered as production: {}", copier.describe());
    assert_eq!(target.requests().len(), 15, "each request once");
    assert_eq!(target_redis, online_redis, "{}", copier.describe());
    assert_eq!(tb.online.xdp_program(iface::ONLINE_TO_CLIENT).unwrap(), None, "no XDP program left");
}
