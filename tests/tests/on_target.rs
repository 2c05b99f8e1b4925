//! `intercept --on-target`: the intercept on the test host itself, with no assistant host and
//! no route beyond the test host's default one. The replies to copied clients are stolen as
//! they leave; what the far side of the test host's link sees proves none escaped.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use common::{endpoint::Endpoint, facts::ReplyFacts, tcp::flags};
use xdpcopy_testbed::{
    bins,
    capture::{self, Tcpdump},
    proto_client::ProtoClient,
    raw::{self, Sniffer},
    servers::Nginx,
    stats,
    topology::{addr, iface},
    traffic, Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

fn target_http() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 8080)
}

/// Where the intercept listens: the test host's own address, which the copier reaches.
fn control() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 36524)
}

/// What the online host sees arriving from the test server's port that is addressed to the
/// clients' networks: a reply that escaped.
const ESCAPED: &str = "src host 10.100.2.2 and src port 8080 and (dst net 10.100.1.0/24 or dst net fd00:100:1::/64)";

fn start_intercept(tb: &Testbed) -> Process {
    let mut cmd = tb.command(Host::Target, bins::xdpcopy("intercept"));
    cmd.args(["--on-target", "--iface", iface::TARGET_TO_ONLINE, "--target", &target_http().to_string()]).args([
        "--listen",
        &control().to_string(),
        "--allow",
        "10.100.2.0/24",
        "--stats-interval",
        "1",
    ]);
    let mut p = tb.start("intercept", cmd).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("TC egress program attached")).unwrap();
    p
}

/// A segment from the test server's port to `client`, sent by the test host's kernel (a raw
/// socket: it leaves by the route, through TC egress, as the server's own would).
fn send_reply_to(tb: &Testbed, client: (Ipv4Addr, u16), seq: u32) {
    let packet = raw::ipv4_tcp((addr::TARGET, 8080), client, seq, 1, flags::ACK, &[], b"late");
    tb.target.run(move || raw::send_ipv4(&packet)).unwrap().unwrap();
}

/// The sequence numbers of the segments from the test server's port among `frames`.
fn escaped_seqs(frames: &[Vec<u8>]) -> BTreeSet<u32> {
    let from_target = Endpoint::v4(addr::TARGET.octets(), 8080);
    frames
        .iter()
        .filter_map(|f| ReplyFacts::from_frame(f).ok().flatten())
        .filter(|r| r.target == from_target)
        .map(|r| r.seq.0)
        .collect()
}

#[test]
fn only_owned_clients_replies_are_stolen_released_ones_a_while_longer_and_none_once_it_stops() {
    let tb = Testbed::without_assistant().unwrap();
    let mut intercept = start_intercept(&tb);
    let far_side = tb.online.run(Sniffer::open).unwrap().unwrap();
    let (owned, other) = ((addr::CLIENT, 45678), (addr::CLIENT, 45679));

    let mut copier = ProtoClient::connect(&tb.online, control(), b"", 7).unwrap();
    assert!(!copier.holds_early, "a reply nobody owns leaves the test host: copiers must wait for SYNCED");
    copier.own(&[Endpoint::v4(owned.0.octets(), owned.1)]).unwrap();
    copier.sync(1).unwrap();
    send_reply_to(&tb, owned, 111);
    send_reply_to(&tb, other, 222);
    let facts = copier.facts_for(Duration::from_secs(1)).unwrap();
    assert_eq!(facts.iter().map(|f| f.seq.0).collect::<Vec<_>>(), [111], "the owned client's reply, as facts");

    // The copier goes; its endpoint's late replies are still stolen.
    drop(copier);
    std::thread::sleep(Duration::from_millis(300));
    send_reply_to(&tb, owned, 333);
    std::thread::sleep(Duration::from_millis(300));
    let seen = escaped_seqs(&far_side.drain());
    assert_eq!(seen, BTreeSet::from([222]), "only the unowned client's reply left\n{}", intercept.describe());
    // Stats lines come each second: the next one counts both.
    let counted =
        intercept.wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("stolen") >= 2));
    assert!(counted.is_ok(), "{}", intercept.describe());

    // Killed, it leaves nothing behind: the tcx link goes with the process.
    intercept.signal(libc::SIGKILL).unwrap();
    intercept.wait_timeout(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seq = 444;
    loop {
        send_reply_to(&tb, owned, seq);
        std::thread::sleep(Duration::from_millis(100));
        if escaped_seqs(&far_side.drain()).contains(&seq) {
            break;
        }
        assert!(Instant::now() < deadline, "replies are still stolen after the intercept was killed");
        seq += 1;
    }
}

#[test]
fn a_replay_is_answered_in_full_and_no_reply_leaves_the_test_host() {
    let tb = Testbed::without_assistant().unwrap();
    let online_http = SocketAddr::new(addr::ONLINE.into(), 80);
    // Large answers leave as GSO packets, which the ring holds only in part.
    let big = tb.dir().join("big.bin");
    std::fs::write(&big, vec![b'x'; 300_000]).unwrap();
    let locations = format!(
        r#"location / {{ return 200 "ok\n"; }}
        location = /big {{ alias {}; }}
        location /upload/ {{ proxy_pass http://127.0.0.1:9; }}"#,
        big.display()
    );
    let online = Nginx::start_with(&tb, Host::Online, "online-nginx", online_http, &locations).unwrap();
    let target = Nginx::start_with(&tb, Host::Target, "target-nginx", target_http(), &locations).unwrap();
    let intercept = start_intercept(&tb);
    let escaped = Tcpdump::start(&tb, Host::Online, iface::ONLINE_TO_TARGET, ESCAPED, "escaped").unwrap();

    let dump = Tcpdump::start(&tb, Host::Client, iface::CLIENT_TO_ONLINE, "tcp port 80", "clients").unwrap();
    tb.client
        .run(move || {
            for i in 0..20 {
                assert_eq!(traffic::http_get(online_http, &format!("/short/{i}")).unwrap(), 200);
            }
            let paths: Vec<String> = (0..5).map(|i| format!("/keepalive/{i}")).collect();
            assert_eq!(traffic::http_keepalive(online_http, &paths).unwrap(), vec![200; 5]);
            for _ in 0..3 {
                assert_eq!(traffic::http_get(online_http, "/big").unwrap(), 200);
            }
            for i in 0..2 {
                let status = traffic::http_post(online_http, &format!("/upload/{i}"), &vec![b'p'; 100_000]).unwrap();
                assert_eq!(status, 502);
            }
        })
        .unwrap();
    let pcap = dump.finish().unwrap();

    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["-x", &format!("80-{}", target_http()), "-s", &addr::TARGET.to_string()]).args([
        "-i",
        &pcap.to_string_lossy(),
        "--stats-interval",
        "1",
    ]);
    let mut copier = tb.start("copier", cmd).unwrap();
    let status = copier.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}\n{}", copier.describe(), intercept.describe());

    let answered = |n: &Nginx| {
        let mut log: Vec<_> = n.log().into_iter().map(|e| (e.request, e.status, e.length)).collect();
        log.sort();
        log
    };
    assert_eq!(target.log().len(), 30, "{}\n{}", copier.describe(), intercept.describe());
    assert_eq!(answered(&target), answered(&online), "each request whole, answered as production answered");
    let summary = stats::last(&copier.stdout()).expect("a summary line");
    assert_eq!(summary.get("completed"), 26, "{}", copier.describe());

    // The far side saw nothing from the test server to a client; it would have seen this one,
    // to a client no copier owns.
    send_reply_to(&tb, (addr::CLIENT, 1), 7);
    let escaped = capture::packets(&escaped.finish().unwrap()).unwrap();
    assert_eq!(escaped.len(), 1, "replies escaped the test host:\n{}", intercept.describe());
    let line = stats::last(&intercept.stdout()).expect("a stats line");
    assert!(line.get("stolen") > 0 && line.get("lost") == 0, "{}", intercept.describe());
    assert!(line.get("truncated") > 0, "the large answers left as GSO packets: {}", intercept.describe());
}

#[test]
fn the_doctor_passes_the_two_host_path_and_its_probe_does_not_leave_the_test_host() {
    let tb = Testbed::without_assistant().unwrap();
    let _nginx = Nginx::start(&tb, Host::Target, "target-nginx", target_http()).unwrap();
    let intercept = start_intercept(&tb);
    let escaped = Tcpdump::start(&tb, Host::Online, iface::ONLINE_TO_TARGET, ESCAPED, "escaped").unwrap();
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["doctor", "-x", &format!("80-{}", target_http()), "-s", &addr::TARGET.to_string()])
        .args(["-c", "10.100.1.50"]);
    let mut doctor = tb.start("doctor", cmd).unwrap();
    doctor.wait_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(doctor.try_status().unwrap().and_then(|s| s.code()), Some(0), "{}", doctor.describe());
    assert!(doctor.stdout().contains(&format!("target {}: OK", target_http())), "{}", doctor.describe());
    let escaped = capture::packets(&escaped.finish().unwrap()).unwrap();
    assert!(escaped.is_empty(), "the probe's SYN-ACK left:\n{}", intercept.describe());
}
