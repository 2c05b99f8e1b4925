//! `copier doctor`: before any traffic, checks the path a replayed session takes, with the
//! flags of a run. It connects to every intercept, owns one probe endpoint (the first `-c`
//! address, a high port), sends a SYN from it to each target, and says what came back: the
//! SYN-ACK through an intercept (the path works), a reset (the target's port is closed), or
//! nothing (the test host's route back through the assistant host, or its reverse-path filter,
//! or a firewall on the way). The probe session is reset afterwards. Then the MTU: whether the
//! largest segment the copier will send reaches each target (an ICMP echo of that size with
//! Don't Fragment), and whether copy mode copies the online interface's frames whole.

mod ping;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use common::{
    auth,
    capture::JUMBO_CAPTURE_BYTES,
    endpoint::Endpoint,
    facts::ReplyFacts,
    proto::{self, Message},
    seq::SeqNum,
    tcp::flags::{ACK, RST, SYN},
};
use copier_engine::emit::{self, Options};
use ping::Echo;

/// How long a probe waits for its answer: far beyond any SYN-ACK, short of SYN retransmission.
const PROBE_WAIT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One intercept connection, as the doctor needs it: synchronous, just handshake, OWN, SYNC
/// and FACTS.
struct Link {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    /// The intercept's host forwards IP (WELCOME says so).
    forwarding: bool,
}

impl Link {
    fn connect(addr: SocketAddr, secret: Option<&[u8]>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("cannot connect")?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut link = Self { addr, stream, buf: Vec::new(), forwarding: false };
        let nonce = auth::nonce();
        let mut frame = [0; 128];
        let n = proto::encode_hello(&mut frame, auth::instance(), &nonce)?;
        link.stream.write_all(&frame[..n])?;
        let (authenticates, theirs, proof) = match link.next()? {
            Msg::Welcome { authenticates, forwarding, nonce, proof } => {
                link.forwarding = forwarding;
                (authenticates, nonce, proof)
            }
            Msg::Bye(reason) => bail!("refused: {reason}"),
            other => bail!("answered {other:?} to HELLO"),
        };
        let answer = auth::copier_answer(secret, authenticates, &nonce, &theirs, &proof).map_err(anyhow::Error::msg)?;
        let n = proto::encode_auth(&mut frame, &answer)?;
        link.stream.write_all(&frame[..n])?;
        Ok(link)
    }

    /// Owns `client` and waits until the intercept confirms it is in effect.
    fn own(&mut self, client: Endpoint) -> anyhow::Result<()> {
        let mut frame = [0; 64];
        let n = proto::encode_endpoints(&mut frame, true, &[client])?;
        self.stream.write_all(&frame[..n])?;
        let n = proto::encode_sync(&mut frame, false, 1)?;
        self.stream.write_all(&frame[..n])?;
        loop {
            match self.next()? {
                Msg::Synced => return Ok(()),
                Msg::Bye(reason) => bail!("refused: {reason}"),
                Msg::Facts(_) | Msg::Welcome { .. } => {}
            }
        }
    }

    fn next(&mut self) -> anyhow::Result<Msg> {
        loop {
            if let Some((message, used)) = proto::decode(&self.buf).map_err(|e| anyhow::anyhow!("garbage: {e}"))? {
                let msg = match message {
                    Message::Welcome { authenticates, forwarding, nonce, proof, .. } => {
                        Msg::Welcome { authenticates, forwarding, nonce, proof }
                    }
                    Message::Synced(_) => Msg::Synced,
                    Message::Facts(records) => Msg::Facts(records.collect()),
                    Message::Bye { reason, .. } => Msg::Bye(reason.to_owned()),
                    other => bail!("unexpected {other:?}"),
                };
                self.buf.drain(..used);
                return Ok(msg);
            }
            let mut chunk = [0; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[derive(Debug)]
enum Msg {
    Welcome { authenticates: bool, forwarding: bool, nonce: auth::Nonce, proof: auth::Proof },
    Synced,
    Facts(Vec<ReplyFacts>),
    Bye(String),
}

/// What one probe found.
enum Finding {
    /// `mss`: what the target's SYN-ACK said it takes.
    Answered {
        via: SocketAddr,
        mss: Option<u16>,
    },
    Closed,
    Silent,
}

fn probe(
    links: &mut [Link],
    raw: &mut xdp_runtime::tx::RawTx,
    client: Endpoint,
    target: Endpoint,
) -> anyhow::Result<Finding> {
    let isn = SeqNum(u32::from_be_bytes(auth::nonce()[..4].try_into().expect("4 bytes")));
    let options = Options::syn(1460, Some(7), true, None);
    let mut packet = Vec::new();
    let syn = emit::Segment {
        src: client,
        dst: target,
        seq: isn,
        ack: SeqNum(0),
        flags: SYN,
        window: 64240,
        options: options.as_bytes(),
        payload: &[],
    };
    emit::write(&mut packet, &syn);
    raw.send(std::iter::once(packet.as_slice()));
    if let Some(why) = raw.last_error.take() {
        bail!("sending the probe SYN failed: {why}");
    }
    let deadline = Instant::now() + PROBE_WAIT;
    for link in links.iter_mut() {
        link.stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    while Instant::now() < deadline {
        for link in links.iter_mut() {
            let facts = match link.next() {
                Ok(Msg::Facts(f)) => f,
                Ok(_) => continue,
                Err(e)
                    if e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                        matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    }) =>
                {
                    continue
                }
                Err(e) => return Err(e.context(format!("intercept {}", link.addr))),
            };
            for f in facts.iter().filter(|f| f.client == client && f.target == target) {
                if f.flags & RST != 0 {
                    return Ok(Finding::Closed);
                }
                if f.flags & (SYN | ACK) == SYN | ACK && f.ack == isn + 1 {
                    // Leave nothing open on the test server.
                    let rst = emit::Segment { seq: isn + 1, flags: RST, options: &[], ..syn };
                    packet.clear();
                    emit::write(&mut packet, &rst);
                    raw.send(std::iter::once(packet.as_slice()));
                    return Ok(Finding::Answered { via: link.addr, mss: f.tcp_options().mss });
                }
            }
        }
    }
    Ok(Finding::Silent)
}

/// How long an echo may take: a healthy path answers in far less.
const ECHO_WAIT: Duration = Duration::from_secs(1);

/// Whether the largest segment the copier may send `target` (its MSS, at most the MTU of the
/// interface the route leaves by) reaches it whole. `Ok(false)` on a fault.
fn check_path_mtu(target: SocketAddr, mss: Option<u16>) -> anyhow::Result<bool> {
    let ip = target.ip();
    let (if_index, mtu) =
        xdp_runtime::netlink::path_mtu(ip).with_context(|| format!("looking up the route to {ip}"))?;
    let iface = xdp_runtime::iface::name(if_index)?;
    let Some(mss) = mss else {
        println!("doctor: target {target}: MTU not checked: its SYN-ACK named no MSS");
        return Ok(true);
    };
    let wanted = usize::from(mss) + if ip.is_ipv4() { 40 } else { 60 };
    let size = wanted.min(mtu as usize);
    if ping::echo(ip, 64, ECHO_WAIT)? != Echo::Replied {
        println!("doctor: target {target}: MTU not checked: it answers no ping (ICMP echo)");
        return Ok(true);
    }
    let fix = format!(
        "Fix it on this host (ip link set {iface} mtu SIZE: the copier cuts its segments to that MTU) or on that link"
    );
    match ping::echo(ip, size, ECHO_WAIT)? {
        Echo::Replied => {
            let cut = if wanted > size {
                format!(" (its MSS {mss} allows {wanted}: the copier cuts segments to {iface}'s MTU)")
            } else {
                String::new()
            };
            println!("doctor: target {target}: OK: packets of {size} bytes reach it whole{cut}");
            Ok(true)
        }
        Echo::TooBig { mtu: hop } => {
            println!("doctor: FAULT: target {target}: MTU mismatch: the copier sends it packets of up to {size} bytes through {iface}, but a router on the way takes at most {hop} and refuses the rest. {fix}, with SIZE {hop}.");
            Ok(false)
        }
        Echo::Silent => {
            println!("doctor: FAULT: target {target}: MTU mismatch: packets of {size} bytes (its MSS {mss}, {iface}'s MTU {mtu}) do not reach it or come back, small ones do: a link between has a smaller MTU and drops them silently, and so it would drop the copier's largest segments. {fix}, with SIZE that link's MTU.");
            Ok(false)
        }
    }
}

/// Copy mode copies frames of up to [`JUMBO_CAPTURE_BYTES`] whole; `Ok(false)` if the online
/// interface's MTU lets larger ones through.
fn check_online_mtu(iface: &str) -> anyhow::Result<bool> {
    let index = xdp_runtime::iface::index(iface).with_context(|| format!("online interface {iface}"))?;
    let mtu = xdp_runtime::netlink::link_mtu(index)? as usize;
    // Ethernet header and two VLAN tags.
    let frame = mtu + 14 + 8;
    if frame > JUMBO_CAPTURE_BYTES {
        println!("doctor: FAULT: online interface {iface}: its MTU {mtu} lets frames of up to {frame} bytes through, and copy mode copies {JUMBO_CAPTURE_BYTES} of a frame at most: the rest of larger ones is lost (truncated). Fix it on this host: ip link set {iface} mtu {}", JUMBO_CAPTURE_BYTES - 22);
        return Ok(false);
    }
    println!("doctor: online interface {iface}: OK: MTU {mtu}, every frame copied whole");
    Ok(true)
}

/// Runs the checks; `Ok(false)` if it found a fault (each said on standard output). `online`:
/// the interface copy mode will copy from.
pub fn run(
    intercepts: &[SocketAddr],
    secret: Option<&[u8]>,
    targets: &[SocketAddr],
    client: std::net::IpAddr,
    online: Option<&str>,
) -> anyhow::Result<bool> {
    let mut healthy = true;
    if let Some(iface) = online {
        healthy &= check_online_mtu(iface)?;
    }
    let mut links = Vec::new();
    for &addr in intercepts {
        match Link::connect(addr, secret) {
            Ok(link) => {
                println!("doctor: intercept {addr}: connected");
                if link.forwarding {
                    healthy = false;
                    println!("doctor: FAULT: intercept {addr}: its host forwards IP, so the test server's replies that the intercept does not steal (other ports, or all of them when it stops) go on towards the real clients. Fix it on the assistant host: sysctl -w net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
                }
                links.push(link);
            }
            Err(e) => {
                healthy = false;
                println!("doctor: FAULT: intercept {addr}: {e:#}. Fix it on the assistant host (is the intercept running, is {addr} reachable from here, do both use the same --secret-file?)");
            }
        }
    }
    if links.is_empty() {
        return Ok(false);
    }
    let port = 61000 + (u16::from_be_bytes(auth::nonce()[..2].try_into().expect("2 bytes")) % 4000);
    let probe_client = Endpoint::from(SocketAddr::new(client, port));
    for link in &mut links {
        link.own(probe_client).with_context(|| format!("intercept {}", link.addr))?;
    }
    let mut raw = xdp_runtime::tx::RawTx::open().context("opening a raw socket for the probes (needs CAP_NET_RAW)")?;
    for &target in targets {
        match probe(&mut links, &mut raw, probe_client, target.into())? {
            Finding::Answered { via, mss } => {
                println!("doctor: target {target}: OK: a SYN from {probe_client} was answered, and the SYN-ACK came back through the intercept at {via}");
                healthy &= check_path_mtu(target, mss)?;
            }
            Finding::Closed => {
                healthy = false;
                println!("doctor: FAULT: target {target}: it reset the probe SYN: nothing listens on that port. Fix it on the test host (start the test server, or correct -x)");
            }
            Finding::Silent => {
                healthy = false;
                println!(
                    "doctor: FAULT: target {target}: no SYN-ACK reached any intercept within {PROBE_WAIT:?}. On the test host: does `ip route get {client}` say via the assistant host? Is reverse-path filtering off on the interface the copied packets arrive on (sysctl net.ipv4.conf.all.rp_filter=0 and that interface's)? Does a firewall or cloud anti-spoofing rule drop packets from {client}? On the assistant host: is the intercept's --iface where the replies arrive?"
                );
            }
        }
    }
    Ok(healthy)
}
