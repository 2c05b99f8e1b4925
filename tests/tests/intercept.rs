//! The intercept on the namespace test bed: the test server's replies are stolen on the
//! assistant host, go nowhere else, and reach exactly the copier that owns their client, with
//! the right header facts. Peers that do not speak the protocol are closed, not obeyed.

use std::{net::SocketAddr, time::Duration};

use common::{
    endpoint::Endpoint,
    facts::ReplyFacts,
    parse::parse_frame,
    seq::SeqNum,
    tcp::flags::{ACK, SYN},
};
use xdpcopy_testbed::{
    bins,
    proto_client::{ProtoClient, Received},
    raw::{self, Sniffer},
    servers::LineServer,
    stats,
    topology::{addr, iface},
    Host, Process, Testbed,
};

const STARTUP: Duration = Duration::from_secs(20);

fn target() -> SocketAddr {
    SocketAddr::new(addr::TARGET.into(), 8080)
}

fn control() -> SocketAddr {
    SocketAddr::new(addr::ASSIST_CONTROL.into(), 36524)
}

fn start_intercept(tb: &Testbed, extra: &[&str]) -> Process {
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target().to_string()])
        .args(["--listen", &control().to_string(), "--stats-interval", "0.2"])
        .args(extra);
    let mut p = tb.start("intercept", cmd).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("serving copiers")).unwrap();
    p.wait_for_line(STARTUP, |l| l.contains("XDP program attached")).unwrap();
    p
}

/// A SYN from a copied client address, sent the way the copier sends it: from the online host
/// straight to the test server.
fn send_syn(tb: &Testbed, client_port: u16, isn: u32, ts_val: u32) {
    let options = raw::linux_syn_options(1460, ts_val, 7);
    let syn = raw::ipv4_tcp((addr::CLIENT, client_port), (addr::TARGET, 8080), isn, 0, SYN, options.as_bytes(), &[]);
    tb.online.run(move || raw::send_ipv4(&syn)).unwrap().unwrap();
}

fn client(port: u16) -> Endpoint {
    Endpoint::v4(addr::CLIENT.octets(), port)
}

fn from_target(frame: &[u8]) -> bool {
    parse_frame(frame).ok().flatten().is_some_and(|s| s.src == Endpoint::v4(addr::TARGET.octets(), 8080))
}

#[test]
fn syn_acks_are_stolen_and_served_to_their_owner_only() {
    let tb = Testbed::new().unwrap();
    let _server = LineServer::start(&tb, Host::Target, "target-server", target()).unwrap();
    let mut intercept = start_intercept(&tb, &[]);
    let sniffers: Vec<(Host, Sniffer)> = [Host::Assist, Host::Online, Host::Client]
        .into_iter()
        .map(|h| (h, tb.host(h).run(Sniffer::open).unwrap().unwrap()))
        .collect();

    let mut copier_a = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    let mut copier_b = ProtoClient::connect(&tb.online, control(), b"", 2).unwrap();
    assert!(copier_a.holds_early, "an assistant host holds a SYN-ACK that beats its OWN");
    copier_a.own(&[client(40001)]).unwrap();
    copier_b.own(&[client(40002)]).unwrap();
    // SYNCED: the announcements are in effect, so the very first SYN-ACK is routed.
    copier_a.sync(1).unwrap();
    copier_b.sync(1).unwrap();

    send_syn(&tb, 40001, 1000, 777);
    send_syn(&tb, 40002, 5000, 888);

    // The test server retransmits its SYN-ACK (nobody completes the handshake): every copy
    // must go to the same owner.
    let a = copier_a.facts_for(Duration::from_millis(1500)).unwrap();
    let b = copier_b.facts_for(Duration::from_millis(300)).unwrap();
    assert!(!a.is_empty() && !b.is_empty(), "a got {a:?}, b got {b:?}\n{}", intercept.describe());
    assert!(a.iter().all(|f| f.client == client(40001)), "copier A got a foreign reply: {a:?}");
    assert!(b.iter().all(|f| f.client == client(40002)), "copier B got a foreign reply: {b:?}");

    let syn_ack: &ReplyFacts = &a[0];
    assert_eq!(syn_ack.target, Endpoint::v4(addr::TARGET.octets(), 8080));
    assert_eq!(syn_ack.flags & (SYN | ACK), SYN | ACK);
    assert_eq!(syn_ack.ack, SeqNum(1001), "acknowledges the client ISN");
    assert_eq!(syn_ack.payload_len, 0);
    let o = syn_ack.tcp_options();
    assert!(o.mss.is_some_and(|m| m > 0) && o.window_scale.is_some() && o.sack_permitted, "{o:?}");
    assert_eq!(o.timestamps.map(|(_, ecr)| ecr), Some(777), "echoes the client's TSval");
    assert_eq!(b[0].ack, SeqNum(5001));

    // Stolen: no kernel on any host saw the replies (the assistant's AF_PACKET taps sit after XDP).
    for (host, sniffer) in &sniffers {
        let seen = sniffer.drain().into_iter().filter(|f| from_target(f)).count();
        assert_eq!(seen, 0, "{host:?} saw {seen} replies of the test server");
    }
    let s = intercept
        .wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("routed") >= 2))
        .map(|l| stats::parse(&l).unwrap())
        .unwrap();
    assert_eq!(s.get("redirected"), s.get("matched"));
    assert_eq!(s.get("copiers"), 2);
    assert_eq!(s.get("unowned"), 0);
}

#[test]
fn replies_nobody_owns_are_counted_and_dropped() {
    let tb = Testbed::new().unwrap();
    let _server = LineServer::start(&tb, Host::Target, "target-server", target()).unwrap();
    let mut intercept = start_intercept(&tb, &[]);
    let mut copier = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    copier.own(&[client(40001)]).unwrap();
    copier.sync(9).unwrap();
    send_syn(&tb, 40009, 1, 1);
    // The SYN-ACK is held for an OWN that never comes, then dropped: the test server's
    // retransmission a second later finds it expired.
    let s = intercept
        .wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("unowned") >= 1))
        .map(|l| stats::parse(&l).unwrap())
        .unwrap();
    assert!(s.get("held_early") >= 2, "each SYN-ACK was held first: {s:?}");
    assert_eq!(copier.facts_for(Duration::from_millis(300)).unwrap(), vec![]);
}

#[test]
fn a_syn_ack_that_beats_its_own_reaches_the_copier_that_claims_it() {
    let tb = Testbed::new().unwrap();
    let _server = LineServer::start(&tb, Host::Target, "target-server", target()).unwrap();
    let mut intercept = start_intercept(&tb, &[]);
    let mut copier = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    // As the copier does: the SYN leaves first, its OWN a moment later.
    send_syn(&tb, 40003, 3000, 333);
    std::thread::sleep(Duration::from_millis(20));
    copier.own(&[client(40003)]).unwrap();
    // Well before the test server retransmits (a second): the first SYN-ACK, held for the OWN.
    let got = copier.facts_for(Duration::from_millis(500)).unwrap();
    assert!(
        got.first().is_some_and(|f| f.client == client(40003) && f.ack == SeqNum(3001) && f.flags & SYN != 0),
        "got {got:?}\n{}",
        intercept.describe()
    );
    let s = intercept
        .wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("routed") >= 1))
        .map(|l| stats::parse(&l).unwrap())
        .unwrap();
    assert_eq!((s.get("held_early"), s.get("unowned")), (1, 0));
}

#[test]
fn a_lone_copier_gets_replies_unannounced_until_a_second_connects() {
    let tb = Testbed::new().unwrap();
    let _server = LineServer::start(&tb, Host::Target, "target-server", target()).unwrap();
    let mut intercept = start_intercept(&tb, &[]);
    let mut a = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    a.solo().unwrap();
    assert_eq!(a.recv(Duration::from_secs(2)).unwrap(), Received::Sole(true), "{}", intercept.describe());
    // No OWN: the SYN-ACK is its all the same, at once.
    send_syn(&tb, 40011, 1100, 11);
    let got = a.facts_for(Duration::from_millis(500)).unwrap();
    assert!(got.first().is_some_and(|f| f.client == client(40011) && f.ack == SeqNum(1101)), "got {got:?}");

    let mut b = ProtoClient::connect(&tb.online, control(), b"", 2).unwrap();
    assert_eq!(a.recv(Duration::from_secs(2)).unwrap(), Received::Sole(false), "told to announce again");
    b.own(&[client(40012)]).unwrap();
    b.sync(1).unwrap();
    // Until A's SYNC, a reply nobody owns is still A's; B's own replies are B's.
    send_syn(&tb, 40013, 1300, 13);
    send_syn(&tb, 40012, 1200, 12);
    let got_b = b.facts_for(Duration::from_millis(500)).unwrap();
    assert!(!got_b.is_empty() && got_b.iter().all(|f| f.client == client(40012)), "B got {got_b:?}");
    let got_a = a.facts_for(Duration::from_millis(300)).unwrap();
    assert!(got_a.iter().any(|f| f.client == client(40013)), "A got {got_a:?}");
    assert!(got_a.iter().all(|f| f.client != client(40012)), "A got B's: {got_a:?}");
    a.own(&[client(40011)]).unwrap();
    a.sync(7).unwrap();
    // Now what nobody owns is nobody's.
    send_syn(&tb, 40014, 1400, 14);
    std::thread::sleep(Duration::from_millis(200));
    let got_a = a.facts_for(Duration::from_millis(300)).unwrap();
    assert!(got_a.iter().all(|f| f.client != client(40014)), "A got an unowned reply: {got_a:?}");
    drop(b);
    assert_eq!(a.recv(Duration::from_secs(2)).unwrap(), Received::Sole(true), "alone again");
    let s = intercept
        .wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("held_early") >= 1))
        .map(|l| stats::parse(&l).unwrap())
        .unwrap();
    assert_eq!(s.get("claims_refused"), 0);
}

#[test]
fn a_reply_that_waited_for_the_readers_pause_says_how_long() {
    let tb = Testbed::new().unwrap();
    let _server = LineServer::start(&tb, Host::Target, "target-server", target()).unwrap();
    // A pause far longer than anything else here: after the first SYN-ACK the reader sleeps.
    let intercept = start_intercept(&tb, &["--coalesce-us", "100000"]);
    let mut copier = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    copier.own(&[client(40005), client(40006)]).unwrap();
    copier.sync(1).unwrap();
    send_syn(&tb, 40005, 5000, 1);
    let first = match copier.recv(Duration::from_secs(2)).unwrap() {
        Received::Facts(facts) => facts,
        other => panic!("not FACTS: {other:?}"),
    };
    // At once, well within the reader's pause.
    send_syn(&tb, 40006, 6000, 1);
    let second = copier.facts_for(Duration::from_millis(300)).unwrap();
    let (Some(first), Some(second)) = (first.first(), second.first()) else {
        panic!("no SYN-ACKs\n{}", intercept.describe())
    };
    assert_eq!((first.client, second.client), (client(40005), client(40006)));
    assert!(first.age_us < 30_000, "the first after a quiet spell goes at once: {first:?}");
    assert!(second.age_us >= 30_000, "the second waited out the pause, and says so: {second:?}");
}

fn bye_says(r: Received, permanent: bool, says: &str) -> bool {
    matches!(r, Received::Bye { permanent: p, reason } if p == permanent && reason.contains(says))
}

#[test]
fn garbage_wrong_version_and_wrong_secret_close_only_that_connection() {
    let tb = Testbed::new().unwrap();
    let secret_file = tb.dir().join("secret");
    std::fs::write(&secret_file, "let-me-in\n").unwrap();
    let mut intercept = start_intercept(&tb, &["--secret-file", &secret_file.to_string_lossy()]);

    let mut http = ProtoClient::connect_raw(&tb.online, control()).unwrap();
    http.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(bye_says(http.recv(Duration::from_secs(5)).unwrap(), true, "exceeds"));

    // A version 1 copier (HELLO with its secret in clear) is told the version, for good.
    let mut v1 = ProtoClient::connect_raw(&tb.online, control()).unwrap();
    v1.send_bytes(&[0, 0, 0, 9, 1, b'X', b'D', b'P', b'C', 0, 1, 0, 0]).unwrap();
    assert!(bye_says(v1.recv(Duration::from_secs(5)).unwrap(), true, "version 1 is not supported"));

    // A copier with another secret does not trust the intercept: its proof does not hold.
    let refused = ProtoClient::connect(&tb.online, control(), b"guess", 7).err().expect("a wrong secret fails");
    assert!(refused.to_string().contains("proof does not hold"), "{refused:#}");
    let refused = ProtoClient::connect(&tb.online, control(), b"", 8).err().expect("no secret is refused");
    assert!(refused.to_string().contains("wrong secret"), "{refused:#}");

    // A copier that turns to garbage after its handshake is told why on its link, and dropped.
    let mut turned = ProtoClient::connect(&tb.online, control(), b"let-me-in", 9).unwrap();
    turned.send_bytes(&[0, 0, 0, 1, 99]).unwrap();
    assert!(bye_says(turned.recv(Duration::from_secs(5)).unwrap(), true, "unknown frame kind 99"));

    // The intercept still serves copiers that know the secret.
    let _copier = ProtoClient::connect(&tb.online, control(), b"let-me-in", 10).unwrap();
    intercept
        .wait_for_line(Duration::from_secs(5), |l| {
            stats::parse(l).is_some_and(|s| s.get("rejected") >= 5 && s.get("copiers") == 1)
        })
        .unwrap();
    intercept.signal(libc::SIGINT).unwrap();
    assert!(intercept.wait_timeout(Duration::from_secs(10)).unwrap().success(), "{}", intercept.describe());
    assert_eq!(tb.assist().xdp_program(iface::ASSIST_TO_TARGET).unwrap(), None);
}

#[test]
fn an_intercept_without_a_secret_or_an_allow_list_refuses_to_start() {
    let tb = Testbed::new().unwrap();
    let mut cmd = tb.command(Host::Assist, bins::xdpcopy("intercept"));
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target().to_string()]);
    let mut p = tb.start("intercept", cmd).unwrap();
    let status = p.wait_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(2), "{}", p.describe());
    assert!(p.stderr().contains("no --secret-file"), "{}", p.describe());
    assert_eq!(tb.assist().xdp_program(iface::ASSIST_TO_TARGET).unwrap(), None, "nothing attached");
}

#[test]
fn idle_connections_are_closed_and_connections_beyond_the_limit_refused() {
    let tb = Testbed::new().unwrap();
    let mut intercept = start_intercept(&tb, &["--max-copiers", "3", "--idle-timeout", "1"]);
    let mut alive = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    let mut idle = ProtoClient::connect(&tb.online, control(), b"", 2).unwrap();
    let _third = ProtoClient::connect_raw(&tb.online, control()).unwrap(); // never says HELLO
    let mut fourth = ProtoClient::connect_raw(&tb.online, control()).unwrap();
    assert!(bye_says(fourth.recv(Duration::from_secs(5)).unwrap(), false, "at most 3 copiers"));
    for _ in 0..6 {
        alive.ping().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(bye_says(idle.recv(Duration::from_secs(2)).unwrap(), false, "nothing received"), "idle: closed");
    alive.own(&[client(40001)]).unwrap();
    alive.sync(1).unwrap();
    let s = intercept
        .wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("idle_closed") >= 1))
        .map(|l| stats::parse(&l).unwrap())
        .unwrap();
    assert_eq!((s.get("refused"), s.get("copiers")), (1, 1), "{}", intercept.describe());
}

#[test]
fn another_copiers_endpoints_cannot_be_claimed_and_its_own_process_takes_them_back() {
    let tb = Testbed::new().unwrap();
    let mut intercept = start_intercept(&tb, &[]);
    let mut owner = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    owner.own(&[client(40001)]).unwrap();
    owner.sync(1).unwrap();
    let mut thief = ProtoClient::connect(&tb.online, control(), b"", 2).unwrap();
    thief.own(&[client(40002), client(40001)]).unwrap();
    assert!(bye_says(thief.recv(Duration::from_secs(5)).unwrap(), true, "owned by another copier"));
    // The same process reconnecting replaces its old connection and gets its endpoint.
    let mut again = ProtoClient::connect(&tb.online, control(), b"", 1).unwrap();
    assert!(bye_says(owner.recv(Duration::from_secs(5)).unwrap(), false, "replaced"));
    again.own(&[client(40001)]).unwrap();
    again.sync(2).unwrap();
    let s = intercept
        .wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("claims_refused") == 1))
        .map(|l| stats::parse(&l).unwrap())
        .unwrap();
    assert_eq!(s.get("copiers"), 1);
}

#[test]
fn bad_flags_and_inexpressible_filters_exit_2_with_a_reason() {
    let bin = bins::xdpcopy("intercept");
    for (args, says) in [
        (&["--iface", "x"][..], "--target"),
        (&["--iface", "x", "-F", "tcp and dst port 80"][..], "cannot express"),
        (&["--iface", "x", "--target", "nonsense"][..], "invalid value"),
    ] {
        let out = std::process::Command::new(&bin).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
