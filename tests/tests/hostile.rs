//! Other peers on the control channel, hostile or not, beside a real replay: the replay must
//! still be answered in full, and a misconfigured copier must say why and exit non-zero.

use std::{collections::BTreeSet, net::SocketAddr, path::Path, time::Duration};

use common::endpoint::Endpoint;
use xdpcopy_testbed::{
    bins, pcapgen,
    proto_client::{ProtoClient, Received},
    servers::Nginx,
    topology::{addr, iface},
    Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

fn target_http() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 8080)
}

fn control() -> SocketAddr {
    SocketAddr::new(addr::ASSIST_CONTROL.into(), 36524)
}

/// The intercept with a secret, no allow list: anyone on the network may try.
fn start_intercept(tb: &Testbed, secret: &Path) -> Process {
    let mut cmd = tb.command(Host::Assist, bins::xdpcopy("intercept"));
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target_http().to_string()]).args([
        "--secret-file",
        &secret.to_string_lossy(),
        "--max-copiers",
        "16",
        "--stats-interval",
        "0.5",
    ]);
    let mut p = tb.start("intercept", cmd).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    p
}

fn replay(tb: &Testbed, pcap: &Path, secret: &Path) -> Process {
    replay_with(tb, pcap, secret, &[])
}

fn replay_with(tb: &Testbed, pcap: &Path, secret: &Path, extra: &[&str]) -> Process {
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(extra);
    cmd.args(["-x", &format!("80-{}", target_http()), "-s", &addr::ASSIST_CONTROL.to_string()]).args([
        "-i",
        &pcap.to_string_lossy(),
        "--secret-file",
        &secret.to_string_lossy(),
        "--stats-interval",
        "1",
    ]);
    tb.start("copier", cmd).unwrap()
}

fn secret(tb: &Testbed, name: &str, value: &str) -> std::path::PathBuf {
    let path = tb.dir().join(name);
    std::fs::write(&path, value).unwrap();
    path
}

#[test]
fn a_replay_is_answered_in_full_beside_a_hijacker_and_a_connection_flood() {
    let tb = Testbed::new().unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let key = secret(&tb, "secret", "s3cret\n");
    let mut intercept = start_intercept(&tb, &key);
    let sessions = pcapgen::Sessions { count: 200, requests_per_session: 2, gap_us: 2_000 };
    let pcap = tb.dir().join("sessions.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();

    // A hijacker without the secret, claiming every port of the clients' first address.
    let refused = ProtoClient::connect(&tb.online, control(), b"", 99).err().expect("no secret, no connection");
    assert!(refused.to_string().contains("wrong secret"), "{refused:#}");
    // One that knows the secret and declared its client addresses, claiming another's.
    let mut stray = ProtoClient::connect(&tb.online, control(), b"s3cret", 98).unwrap();
    let v4 = |a: [u8; 4]| Endpoint::v4(a, 0).addr;
    stray.space(&[(v4([10, 100, 1, 200]), v4([10, 100, 1, 200]))]).unwrap();
    stray.own(&[Endpoint::v4([10, 100, 1, 100], 0)]).unwrap();
    match stray.recv(Duration::from_secs(5)).unwrap() {
        Received::Bye { permanent: true, reason } => {
            assert!(reason.contains("outside the client addresses"), "{reason}")
        }
        other => panic!("a claim outside the declared space was not refused: {other:?}"),
    }
    // Forty connections that never say HELLO: more than --max-copiers.
    let flood: Vec<_> = (0..40).map(|_| ProtoClient::connect_raw(&tb.online, control()).unwrap()).collect();

    // The real copier declares its -c addresses, and announces nothing outside them.
    let mut copier = replay_with(&tb, &pcap, &key, &["-c", "10.100.1.100-10.100.1.110"]);
    let status = copier.wait_timeout(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{}", copier.describe());
    let requests: BTreeSet<String> = target.requests().into_iter().collect();
    assert_eq!(requests.len(), sessions.requests() as usize, "every request answered\n{}", copier.describe());
    assert!(intercept.stderr().contains("replays from 10.100.1.100-10.100.1.110"), "{}", intercept.describe());
    drop(flood);
    let stats = xdpcopy_testbed::stats::last(&intercept.stdout()).unwrap();
    assert!(stats.get("refused") >= 24, "the flood beyond the limit was refused: {}", intercept.describe());
    assert!(stats.get("rejected") >= 1, "{}", intercept.describe());
    intercept.signal(libc::SIGINT).unwrap();
    assert!(intercept.wait_timeout(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn a_copier_no_longer_alone_announces_what_it_replays_and_loses_no_answer() {
    let tb = Testbed::new().unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let key = secret(&tb, "secret", "s3cret");
    let mut intercept = start_intercept(&tb, &key);
    // Two seconds at the recorded pace: the second copier comes and goes in the middle.
    let sessions = pcapgen::Sessions { count: 200, requests_per_session: 2, gap_us: 10_000 };
    let pcap = tb.dir().join("sessions.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();

    let mut copier = replay(&tb, &pcap, &key);
    intercept.wait_for_line(Duration::from_secs(10), |l| l.contains("is the only one")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut second = ProtoClient::connect(&tb.online, control(), b"s3cret", 77).unwrap();
    second.own(&[Endpoint::v4([10, 100, 1, 250], 9)]).unwrap();
    second.sync(1).unwrap();
    // The first announces every session it has open, then SYNC: from then on a reply nobody
    // owns is nobody's, and its sessions are answered by their OWNs.
    let announced = |l: &str| l.contains("has announced its endpoints");
    intercept
        .wait_for_line(Duration::from_secs(5), announced)
        .unwrap_or_else(|e| panic!("{e}\n{}", intercept.describe()));
    std::thread::sleep(Duration::from_millis(500));
    drop(second);
    let status = copier.wait_timeout(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{}", copier.describe());
    let requests: BTreeSet<String> = target.requests().into_iter().collect();
    assert_eq!(requests.len(), sessions.requests() as usize, "every request answered\n{}", copier.describe());
    let err = intercept.stderr();
    assert!(err.matches("is the only one").count() >= 2, "alone again after the second left\n{err}");
    let stats = xdpcopy_testbed::stats::last(&intercept.stdout()).unwrap();
    assert_eq!(stats.get("claims_refused"), 0, "{}", intercept.describe());
}

#[test]
fn a_copier_with_the_wrong_secret_or_a_taken_address_says_why_and_exits_4() {
    let tb = Testbed::new().unwrap();
    let _target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let key = secret(&tb, "secret", "s3cret");
    let _intercept = start_intercept(&tb, &key);
    let sessions = pcapgen::Sessions { count: 5, requests_per_session: 1, gap_us: 1_000 };
    let pcap = tb.dir().join("sessions.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();

    let mut wrong = replay(&tb, &pcap, &secret(&tb, "wrong", "guess"));
    assert_eq!(wrong.wait_timeout(Duration::from_secs(30)).unwrap().code(), Some(4), "{}", wrong.describe());
    assert!(wrong.stderr().contains("does not know our secret"), "{}", wrong.describe());

    // Another (authenticated) copier owns the first client's endpoint: this one may not replay it.
    let mut owner = ProtoClient::connect(&tb.online, control(), b"s3cret", 1).unwrap();
    let (ip, port) = pcapgen::client(0);
    owner.own(&[Endpoint::v4(ip.octets(), port)]).unwrap();
    owner.sync(1).unwrap();
    let mut second = replay(&tb, &pcap, &key);
    assert_eq!(second.wait_timeout(Duration::from_secs(30)).unwrap().code(), Some(4), "{}", second.describe());
    assert!(second.stderr().contains("owned by another copier"), "{}", second.describe());
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn an_own_flood_is_cut_at_the_per_copier_limit_and_its_memory_returned_beside_a_replay() {
    let tb = Testbed::new().unwrap();
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let key = secret(&tb, "secret", "s3cret");
    let intercept = start_intercept(&tb, &key);
    let before = rss_kib(intercept.pid());

    // A peer that knows the secret (a misbehaving copier) announces 1.1 million endpoints.
    let mut flooder = ProtoClient::connect(&tb.online, control(), b"s3cret", 5).unwrap();
    let endpoints: Vec<Endpoint> =
        (0..1_100_000u32).map(|i| Endpoint::v4([10, 200, (i / 60_000) as u8, 1], (i % 60_000) as u16 + 1)).collect();
    let mut refused = None;
    for chunk in endpoints.chunks(common::proto::MAX_ENTRIES) {
        if flooder.own(chunk).is_err() {
            break; // the intercept closed the connection
        }
    }
    while let Ok(r) = flooder.recv(Duration::from_secs(10)) {
        if let Received::Bye { permanent, reason } = r {
            refused = Some((permanent, reason));
            break;
        }
    }
    let (permanent, reason) = refused.expect("the flood is refused");
    assert!(permanent && reason.contains("more client endpoints than one copier may"), "{reason}");

    // The tables shrink back once it is gone.
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(intercept.pid());
    assert!(after < before + 32 * 1024, "RSS {before} KiB before the flood, {after} KiB after it");

    // And a real replay is answered in full.
    let sessions = pcapgen::Sessions { count: 100, requests_per_session: 1, gap_us: 1_000 };
    let pcap = tb.dir().join("sessions.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    let mut copier = replay(&tb, &pcap, &key);
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    assert_eq!(target.requests().len(), 100, "{}", copier.describe());
}
