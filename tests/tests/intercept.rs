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
    let mut cmd = tb.command(Host::Assist, bins::xdpcopy("intercept"));
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

    let mut copier_a = ProtoClient::connect(&tb.online, control(), b"").unwrap();
    let mut copier_b = ProtoClient::connect(&tb.online, control(), b"").unwrap();
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
    let mut copier = ProtoClient::connect(&tb.online, control(), b"").unwrap();
    copier.own(&[client(40001)]).unwrap();
    copier.sync(9).unwrap();
    send_syn(&tb, 40009, 1, 1);
    intercept
        .wait_for_line(Duration::from_secs(5), |l| stats::parse(l).is_some_and(|s| s.get("unowned") >= 1))
        .unwrap();
    assert_eq!(copier.facts_for(Duration::from_millis(300)).unwrap(), vec![]);
}

#[test]
fn garbage_wrong_version_and_wrong_secret_close_only_that_connection() {
    let tb = Testbed::new().unwrap();
    let secret_file = tb.dir().join("secret");
    std::fs::write(&secret_file, "let-me-in\n").unwrap();
    let mut intercept = start_intercept(&tb, &["--secret-file", &secret_file.to_string_lossy()]);

    let mut http = ProtoClient::connect_raw(&tb.online, control()).unwrap();
    http.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(matches!(http.recv(Duration::from_secs(5)).unwrap(), Received::Bye(r) if r.contains("exceeds")));

    let mut v2 = ProtoClient::connect_raw(&tb.online, control()).unwrap();
    v2.send_bytes(&[0, 0, 0, 9, 1, b'X', b'D', b'P', b'C', 0, 2, 0, 0]).unwrap();
    assert!(matches!(v2.recv(Duration::from_secs(5)).unwrap(), Received::Bye(r) if r.contains("version 2")));

    let refused = ProtoClient::connect(&tb.online, control(), b"guess").err().expect("a wrong secret is refused");
    assert!(refused.to_string().contains("wrong secret"), "{refused:#}");

    // A copier that turns to garbage after its HELLO is told why on its link, and dropped.
    let mut turned = ProtoClient::connect(&tb.online, control(), b"let-me-in").unwrap();
    turned.send_bytes(&[0, 0, 0, 1, 99]).unwrap();
    assert!(
        matches!(turned.recv(Duration::from_secs(5)).unwrap(), Received::Bye(r) if r.contains("unknown frame kind 99"))
    );

    // The intercept still serves copiers that know the secret.
    let _copier = ProtoClient::connect(&tb.online, control(), b"let-me-in").unwrap();
    intercept
        .wait_for_line(Duration::from_secs(5), |l| {
            stats::parse(l).is_some_and(|s| s.get("rejected") >= 4 && s.get("copiers") == 1)
        })
        .unwrap();
    intercept.signal(libc::SIGINT).unwrap();
    assert!(intercept.wait_timeout(Duration::from_secs(10)).unwrap().success(), "{}", intercept.describe());
    assert_eq!(tb.assist.xdp_program(iface::ASSIST_TO_TARGET).unwrap(), None);
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
