//! The TCP server copiers connect to (docs/architecture.md §3).
//!
//! One task per copier connection reads its announcements and applies them to the shared
//! [`Routes`] at once, so a SYNCED it answers covers everything the copier sent before. On an
//! assistant host a SYN-ACK that beats its OWN is held for it ([`intercept_core::early`]), and
//! a lone copier that offered SOLO announces nothing and gets what nobody owns
//! ([`intercept_core::solo`]). The
//! AF_XDP workers route each batch of replies under the same lock and write the facts straight
//! into the owning copier's socket; what a socket does not take waits, bounded, for the
//! connection's flusher (see [`intercept_core::outbound`]). A peer that sends garbage, an
//! oversized frame, a wrong version or a wrong proof gets a BYE with the reason and is closed;
//! nothing it sends can stop the server. Connections, idle time and owned endpoints are bounded
//! ([`Limits`]); an endpoint a live copier owns cannot be claimed by another.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use common::{
    auth,
    endpoint::Endpoint,
    facts::ReplyFacts,
    hash::Hasher,
    proto::{self, Message, MAX_FRAME_LEN, MAX_RECORDS},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::Notify,
};
use xdp_runtime::AbortOnDrop;

use intercept_core::{
    answer_cut::AnswerCuts,
    early::EarlyReplies,
    outbound::{Outbound, Sent},
    router::{ClaimError, CopierId, Ownership, MAX_OWNED_PER_COPIER},
    solo::{Solo, Tell},
    space::ClientSpace,
    stealing::Stealing,
};
use ipnet::IpNet;

use crate::stats::Stats;

/// Bytes held for one copier beyond what its socket took (about 16 000 facts) before its facts
/// are dropped and counted.
pub const MAX_PENDING_BYTES: usize = 1 << 20;
/// Time a new connection has for its HELLO, and again for its AUTH.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may connect.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Copiers must prove they know it (and the intercept proves it to them).
    pub secret: Option<Arc<[u8]>>,
    /// Copiers' networks (empty: any).
    pub allow: Vec<IpNet>,
    /// This host forwards IP, said in WELCOME so that copiers (and `copier doctor`) can warn.
    pub forwarding: bool,
}

impl Access {
    fn allows(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer))
    }
}

/// What any number of peers can make the server hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections at once, handshakes included.
    pub max_copiers: usize,
    /// A connection that sends nothing this long is closed (copiers PING well within it).
    pub idle_timeout: Duration,
}
/// How long a closing connection waits for its last frames (a BYE) to go out.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Where routed frames go: a copier's connection (in the unit tests, a recorder).
pub trait Link {
    /// Sends a frame without waiting; false if it was dropped.
    fn send(&self, frame: &[u8]) -> bool;
}

/// One copier's connection, as whoever writes to it sees it.
pub struct CopierLink {
    socket: OwnedWriteHalf,
    out: Mutex<Outbound>,
    /// Rung when bytes wait in `out` for the socket to be writable again.
    waiting: Notify,
}

impl CopierLink {
    fn new(socket: OwnedWriteHalf) -> Self {
        Self { socket, out: Mutex::new(Outbound::new(MAX_PENDING_BYTES)), waiting: Notify::new() }
    }

    fn out(&self) -> MutexGuard<'_, Outbound> {
        self.out.lock().expect("no writer panics holding it")
    }

    /// Writes what waits whenever the socket has room, until the connection breaks.
    async fn flush_when_writable(&self) {
        loop {
            self.waiting.notified().await;
            loop {
                let flushed = self.out().flush(|b| self.socket.try_write(b));
                match flushed {
                    Ok(()) => break,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        if self.socket.writable().await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
    }

    /// Waits (bounded) until nothing waits to be written.
    async fn drained(&self, within: Duration) {
        let until = Instant::now() + within;
        while !{
            let out = self.out();
            out.is_empty() || out.is_broken()
        } && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Link for CopierLink {
    /// From any thread: what the socket does not take waits for the flusher (see [`Sent`]).
    fn send(&self, frame: &[u8]) -> bool {
        match self.out().send(frame, |b| self.socket.try_write(b)) {
            Sent::Written => true,
            Sent::Queued => {
                self.waiting.notify_one();
                true
            }
            Sent::Dropped => false,
        }
    }
}

/// The first payload bytes of a batch's replies (one entry per reply, empty when no copier
/// wants payload), in one reused buffer.
#[derive(Debug, Default)]
pub struct Payloads {
    bytes: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
}

impl Payloads {
    pub fn push(&mut self, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.spans.push(start..self.bytes.len());
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    pub(crate) fn get(&self, i: usize) -> &[u8] {
        self.spans.get(i).map_or(&[], |r| &self.bytes[r.clone()])
    }
}

/// Who owns which client endpoint, and the copiers' connections: what routing a reply needs.
/// Shared under one lock, taken once per batch of replies and once per announcement frame.
pub struct Routes<L = CopierLink> {
    ownership: Ownership,
    links: HashMap<CopierId, Arc<L>, Hasher>,
    /// Each copier process's connection (by its instance) and how to close it: a process that
    /// reconnects replaces its own stale connection.
    instances: HashMap<u64, (CopierId, Arc<Notify>), Hasher>,
    /// A batch's replies per copier (vectors reused).
    grouped: HashMap<CopierId, Vec<ReplyFacts>, Hasher>,
    /// Copiers that want payload, and how many bytes of each answer.
    wants: HashMap<CopierId, u32, Hasher>,
    cuts: AnswerCuts,
    /// A batch's replies with payload per copier that wants it: the reply and its index.
    grouped_payload: HashMap<CopierId, Vec<(ReplyFacts, usize, usize)>, Hasher>,
    /// Encoding buffer (reused).
    frame: Vec<u8>,
    /// On the test host: the eBPF map of owned endpoints kept in step with `ownership`, and
    /// when the routes were made (its clock).
    stealing: Option<(Stealing, Instant)>,
    /// SYN-ACKs that came before the OWN of their client (not on the test host: there a reply
    /// nobody owns is not stolen, so the copiers wait for SYNCED instead).
    early: EarlyReplies,
    /// The clock of `early`.
    started: Instant,
    /// Held replies on their way to a new owner (reused).
    claimed: Vec<ReplyFacts>,
    /// The copier that goes without announcing, if any (SOLO/SOLE).
    solo: Solo,
    /// The client addresses each copier declared (SPACE): a fallback copier gets only the
    /// replies within its own.
    spaces: HashMap<CopierId, ClientSpace, Hasher>,
    /// A batch's replies nobody owns, for the fallback copier (reused).
    unclaimed: Vec<ReplyFacts>,
}

/// The routes, shared by the AF_XDP workers and the connections.
pub type SharedRoutes = Arc<Mutex<Routes>>;

impl<L> Default for Routes<L> {
    fn default() -> Self {
        Self {
            ownership: Ownership::default(),
            links: HashMap::default(),
            instances: HashMap::default(),
            grouped: HashMap::default(),
            wants: HashMap::default(),
            cuts: AnswerCuts::default(),
            grouped_payload: HashMap::default(),
            frame: Vec::new(),
            stealing: None,
            early: EarlyReplies::default(),
            started: Instant::now(),
            claimed: Vec::new(),
            solo: Solo::default(),
            spaces: HashMap::default(),
            unclaimed: Vec::new(),
        }
    }
}

impl Routes {
    pub fn lock(routes: &SharedRoutes) -> MutexGuard<'_, Routes> {
        routes.lock().expect("no router panics holding it")
    }
}

impl<L> Routes<L> {
    /// Routes of an intercept on the test host: every change of ownership reaches `stealing`'s
    /// map before the announcement that made it is answered, and all copiers together own at
    /// most `capacity` endpoints (the map's size).
    pub fn stealing(stealing: Stealing, capacity: usize) -> Self {
        let mut ownership = Ownership::with_limits(MAX_OWNED_PER_COPIER.min(capacity), capacity);
        ownership.record_changes();
        Self { ownership, stealing: Some((stealing, Instant::now())), ..Self::default() }
    }

    /// Whether a SYN-ACK that comes before the OWN of its client is held for it (said in
    /// WELCOME): everywhere but on the test host.
    pub fn holds_early(&self) -> bool {
        self.stealing.is_none()
    }

    fn disown_all(&mut self, id: CopierId, entries: &[Endpoint]) {
        if self.solo.is_sole(id) {
            return;
        }
        self.ownership.disown_all(id, entries);
        let _ = self.sync();
    }

    /// Applies the ownership's changes to the stolen set (on the test host).
    fn sync(&mut self) -> io::Result<()> {
        match &mut self.stealing {
            Some((stealing, start)) => stealing.sync(&mut self.ownership, start.elapsed()),
            None => Ok(()),
        }
    }

    /// Stops stealing the replies of endpoints released long enough ago; returns how many
    /// still linger.
    pub fn expire(&mut self) -> usize {
        match &mut self.stealing {
            Some((stealing, start)) => {
                stealing.expire(&self.ownership, start.elapsed());
                stealing.lingering()
            }
            None => 0,
        }
    }
}

impl<L: Link> Routes<L> {
    /// Records an announcement; on the test host its endpoints' replies are stolen from now on,
    /// elsewhere the SYN-ACKs held for them go to `id` now.
    fn own_all(&mut self, id: CopierId, entries: &[Endpoint], stats: &Stats) -> Result<(), Refusal> {
        if self.solo.is_sole(id) {
            // Sent before it heard it is sole: every reply nobody owns is its anyway.
            return Ok(());
        }
        let claimed = self.ownership.own_all(id, entries);
        // What was owned before a refusal is in the map too: the disconnect releases it.
        self.sync().map_err(|err| Refusal::transient(format!("stealing the replies of its clients: {err}")))?;
        if !self.early.is_empty() {
            let now = self.started.elapsed();
            Stats::add(&stats.unowned, self.early.expire(now) as u64);
            let mut held = std::mem::take(&mut self.claimed);
            for entry in entries.iter().filter(|e| self.ownership.owner(e) == Some(id)) {
                self.early.take(entry, now, &mut held);
            }
            if !held.is_empty() {
                // Routed as any reply now: to its owner.
                self.route(&held, &Payloads::default(), stats);
                held.clear();
            }
            self.claimed = held;
        }
        claimed.map_err(|err| {
            // Taken: another copier replays these sessions; the limits: it would grow without bound.
            Refusal::permanent(match err {
                ClaimError::Taken(_) => format!("{err}: two copiers replay from the same client addresses"),
                ClaimError::TooMany(_) | ClaimError::Full(_) => err.to_string(),
            })
        })
    }

    /// A reply nobody owns: held for its OWN if it opens a session (and this host holds them),
    /// counted and dropped otherwise.
    fn unowned(early: &mut EarlyReplies, holds: bool, started: Instant, reply: &ReplyFacts, stats: &Stats) {
        if holds && EarlyReplies::opens_session(reply) && early.hold(reply, started.elapsed()) {
            Stats::add(&stats.held_early, 1);
        } else {
            Stats::add(&stats.unowned, 1);
        }
    }

    /// Sends every reply of a batch to the copier that owns its client (or, if nobody does, to
    /// the lone copier's fallback within its space), counting what goes nowhere and what a
    /// slow copier could not take. `payload` holds the replies' first bytes
    /// while some copier wants them.
    pub fn route(&mut self, batch: &[ReplyFacts], payload: &Payloads, stats: &Stats) {
        self.grouped.values_mut().for_each(Vec::clear);
        if !self.early.is_empty() {
            Stats::add(&stats.unowned, self.early.expire(self.started.elapsed()) as u64);
        }
        if self.wants.is_empty() {
            let fallback = self.fallback();
            // Its space looked up once a batch, not once a reply.
            let space = fallback.and_then(|id| self.spaces.get(&id));
            let (early, holds, started) = (&mut self.early, self.stealing.is_none(), self.started);
            let unclaimed = &mut self.unclaimed;
            self.ownership.route(batch, &mut self.grouped, |r| match fallback {
                Some(_) if space.is_none_or(|s| s.contains(&r.client)) => unclaimed.push(*r),
                _ => Self::unowned(early, holds, started, r, stats),
            });
            if let (Some(id), false) = (fallback, self.unclaimed.is_empty()) {
                self.grouped.entry(id).or_default().append(&mut self.unclaimed);
            }
        } else {
            self.route_with_payload(batch, payload, stats);
        }
        for (id, replies) in &self.grouped {
            let Some(link) = self.links.get(id) else { continue };
            for chunk in replies.chunks(MAX_RECORDS) {
                self.frame.resize(proto::HEADER_LEN + 2 + chunk.len() * proto::RECORD_LEN, 0);
                let n = proto::encode_facts(&mut self.frame, chunk).expect("sized for the chunk");
                let counter = if link.send(&self.frame[..n]) { &stats.routed } else { &stats.slow_copier_dropped };
                Stats::add(counter, chunk.len() as u64);
            }
        }
    }

    /// Groups the batch by owner, the replies of copiers that want payload apart with the
    /// part of their payload within the first bytes of their answer, and sends those.
    fn route_with_payload(&mut self, batch: &[ReplyFacts], payload: &Payloads, stats: &Stats) {
        self.grouped_payload.values_mut().for_each(Vec::clear);
        let (mut sent, mut cut) = (0, 0);
        let holds = self.holds_early();
        let fallback = self.fallback();
        let space = fallback.and_then(|id| self.spaces.get(&id));
        for (i, r) in batch.iter().enumerate() {
            let owner = self
                .ownership
                .owner(&r.client)
                .or_else(|| fallback.filter(|_| space.is_none_or(|s| s.contains(&r.client))));
            let Some(owner) = owner else {
                Self::unowned(&mut self.early, holds, self.started, r, stats);
                continue;
            };
            match self.wants.get(&owner) {
                Some(&limit) => {
                    let keep = self.cuts.keep(r, limit).min(payload.get(i).len());
                    sent += keep as u64;
                    cut += u64::from(r.payload_len) - keep as u64;
                    self.grouped_payload.entry(owner).or_default().push((*r, i, keep));
                }
                None => self.grouped.entry(owner).or_default().push(*r),
            }
        }
        Stats::add(&stats.payload_sent, sent);
        Stats::add(&stats.payload_cut, cut);
        let mut items: Vec<(ReplyFacts, &[u8])> = Vec::new();
        for (id, replies) in &self.grouped_payload {
            let Some(link) = self.links.get(id) else { continue };
            let mut rest = replies.as_slice();
            while !rest.is_empty() {
                // As many as fit one frame.
                items.clear();
                let mut len = 1 + 2;
                for &(r, i, keep) in rest {
                    let p = &payload.get(i)[..keep];
                    if len + proto::PAYLOAD_ITEM_LEN + p.len() > MAX_FRAME_LEN || items.len() == u16::MAX as usize {
                        break;
                    }
                    len += proto::PAYLOAD_ITEM_LEN + p.len();
                    items.push((r, p));
                }
                rest = &rest[items.len()..];
                self.frame.resize(4 + len, 0);
                let n = proto::encode_payload_facts(&mut self.frame, &items).expect("sized for the items");
                let counter = if link.send(&self.frame[..n]) { &stats.routed } else { &stats.slow_copier_dropped };
                Stats::add(counter, items.len() as u64);
            }
        }
    }

    /// Copier `id` wants the first `bytes` of each answer (0: none); returns the most any
    /// copier wants now.
    fn want_payload(&mut self, id: CopierId, bytes: u32) -> u32 {
        if bytes == 0 {
            self.wants.remove(&id);
        } else {
            self.wants.insert(id, bytes);
        }
        self.wants.values().copied().max().unwrap_or(0)
    }

    /// Adds copier `id` of process `instance`; an older connection of the same process is
    /// released at once (its endpoints free for this one) and told to close.
    fn connect(&mut self, id: CopierId, instance: u64, link: Arc<L>, close: Arc<Notify>) -> Option<CopierId> {
        self.links.insert(id, link);
        let old = self.instances.insert(instance, (id, close));
        let old = old.map(|(old, close)| {
            self.release(old);
            close.notify_one();
            old
        });
        self.settle_solo();
        old
    }

    /// The copier that gets what nobody owns, if it is still connected.
    fn fallback(&self) -> Option<CopierId> {
        self.solo.fallback().filter(|id| self.links.contains_key(id))
    }

    /// `id` offered SOLO: it may go without announcing while it is the only copier.
    fn offer_solo(&mut self, id: CopierId) {
        self.solo.offer(id);
        self.settle_solo();
    }

    /// `id` sent SYNC: what it announced before is in effect.
    fn synced(&mut self, id: CopierId) {
        if self.solo.synced(id) {
            log::info!("copier {id} has announced its endpoints: replies nobody owns are nobody's again");
        }
    }

    /// Tells copiers whether they are sole, after copiers came, went or offered.
    fn settle_solo(&mut self) {
        let linked: Vec<CopierId> = self.links.keys().copied().collect();
        for tell in self.solo.settle(&linked, self.holds_early()) {
            let (id, sole) = match tell {
                Tell::Sole(id) => {
                    // What it announced before is all its anyway, and it will not disown it.
                    self.ownership.remove_copier(id);
                    log::info!("copier {id} is the only one: it announces nothing, and gets every reply nobody owns");
                    (id, true)
                }
                Tell::Announce(id) => {
                    log::info!("copier {id} is not the only one any more: it announces its endpoints again");
                    (id, false)
                }
            };
            if let Some(link) = self.links.get(&id) {
                link.send(&frame(|b| proto::encode_sole(b, sole), 8));
            }
        }
    }

    fn release(&mut self, id: CopierId) -> usize {
        self.solo.forget(id);
        self.spaces.remove(&id);
        self.links.remove(&id);
        self.grouped.remove(&id);
        self.grouped_payload.remove(&id);
        self.wants.remove(&id);
        let released = self.ownership.remove_copier(id);
        let _ = self.sync();
        released
    }

    /// Forgets a copier and everything it owned; returns how many endpoints that was.
    fn disconnect(&mut self, id: CopierId, instance: u64) -> usize {
        if self.instances.get(&instance).is_some_and(|(current, _)| *current == id) {
            self.instances.remove(&instance);
        }
        let released = self.release(id);
        self.settle_solo();
        released
    }
}

fn frame(encode: impl FnOnce(&mut [u8]) -> Result<usize, proto::ProtoError>, capacity: usize) -> Vec<u8> {
    let mut buf = vec![0; capacity];
    let n = encode(&mut buf).expect("frames we build fit their buffers");
    buf.truncate(n);
    buf
}

/// A connection ends with this: why, and whether a retry could do better.
#[derive(Debug)]
struct Refusal {
    permanent: bool,
    reason: String,
}

impl Refusal {
    fn permanent(reason: impl Into<String>) -> Self {
        Self { permanent: true, reason: reason.into() }
    }

    fn transient(reason: impl Into<String>) -> Self {
        Self { permanent: false, reason: reason.into() }
    }
}

fn bye(r: &Refusal) -> Vec<u8> {
    frame(|b| proto::encode_bye(b, r.permanent, &r.reason), proto::HEADER_LEN + 1 + proto::MAX_REASON_LEN)
}

/// Counts a connection while it lives.
struct Slot(Arc<Stats>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves copiers on `listener` until the process stops; the AF_XDP workers route replies
/// through `routes`.
pub async fn serve(listener: TcpListener, access: Access, limits: Limits, routes: SharedRoutes, stats: Arc<Stats>) {
    let access = Arc::new(access);
    let mut next_id: CopierId = 1;
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Out of descriptors, say: wait, rather than spin on the error.
                log::warn!("accepting a copier connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let refusal = if !access.allows(peer.ip()) {
            Some(Refusal::permanent(format!("{} is not in this intercept's --allow list", peer.ip())))
        } else if stats.connections.load(std::sync::atomic::Ordering::Relaxed) as usize >= limits.max_copiers {
            Some(Refusal::transient(format!("this intercept serves at most {} copiers", limits.max_copiers)))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            Stats::add(&stats.refused, 1);
            log::warn!("refusing a connection from {peer}: {}", refusal.reason);
            // A refused peer gets one bounded write and no task of its own.
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.write_all(&bye(&refusal))).await;
            continue;
        }
        let _ = stream.set_nodelay(true);
        Stats::add(&stats.connections, 1);
        let slot = Slot(Arc::clone(&stats));
        let id = next_id;
        next_id += 1;
        let (access, routes, stats) = (Arc::clone(&access), Arc::clone(&routes), Arc::clone(&stats));
        tokio::spawn(async move {
            connection(id, stream, peer, &access, limits, routes, stats).await;
            drop(slot);
        });
    }
}

/// Reads frames from `rd` into `buf` until one decodes; returns it as an owned value via `f`.
async fn next_frame<T>(
    rd: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
    f: impl Fn(Message<'_>) -> T,
) -> Result<Option<T>, String> {
    loop {
        match proto::decode(buf) {
            Ok(Some((message, used))) => {
                let out = f(message);
                buf.drain(..used);
                return Ok(Some(out));
            }
            Ok(None) => {}
            Err(err) => return Err(err.to_string()),
        }
        buf.reserve(16 * 1024);
        match rd.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("connection closed in the middle of a frame".into()),
            Ok(_) => {}
            Err(err) => return Err(format!("read failed: {err}")),
        }
        debug_assert!(buf.len() <= MAX_FRAME_LEN + 4 + 16 * 1024);
    }
}

enum Incoming {
    Hello { instance: u64, nonce: auth::Nonce },
    Auth(auth::Proof),
    Ping,
    Space(ClientSpace),
    WantPayload(u32),
    Own(Vec<Endpoint>),
    Disown(Vec<Endpoint>),
    Bye(String),
    Sync(u64),
    Solo,
    Unexpected(&'static str),
}

fn incoming(m: Message<'_>) -> Incoming {
    match m {
        Message::Hello { instance, nonce } => Incoming::Hello { instance, nonce },
        Message::Auth { proof } => Incoming::Auth(proof),
        Message::Ping => Incoming::Ping,
        Message::Space(ranges) => Incoming::Space(ClientSpace::new(ranges)),
        Message::WantPayload(bytes) => Incoming::WantPayload(bytes),
        Message::PayloadFacts(_) => Incoming::Unexpected("PAYLOAD_FACTS"),
        Message::Own(entries) => Incoming::Own(entries.collect()),
        Message::Disown(entries) => Incoming::Disown(entries.collect()),
        Message::Bye { reason, .. } => Incoming::Bye(reason.to_owned()),
        Message::Welcome { .. } => Incoming::Unexpected("WELCOME"),
        Message::Facts(_) => Incoming::Unexpected("FACTS"),
        Message::Sync(token) => Incoming::Sync(token),
        Message::Synced(_) => Incoming::Unexpected("SYNCED"),
        Message::Solo => Incoming::Solo,
        Message::Sole(_) => Incoming::Unexpected("SOLE"),
    }
}

/// HELLO, WELCOME with this side's proof, AUTH with the copier's: returns the copier's
/// instance. Without a secret the proofs are zeros and not checked.
async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut Vec<u8>,
    secret: Option<&[u8]>,
    forwarding: bool,
    holds_early: bool,
) -> Result<u64, Refusal> {
    let within = |what: &'static str| move |_| Refusal::permanent(format!("no {what} within {HANDSHAKE_TIMEOUT:?}"));
    let garbage = |reason: String| Refusal::permanent(reason);
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, next_frame(rd, buf, incoming))
        .await
        .map_err(within("HELLO"))?
        .map_err(garbage)?;
    let (instance, copier_nonce) = match first {
        Some(Incoming::Hello { instance, nonce }) => (instance, nonce),
        Some(_) => return Err(Refusal::permanent("the first frame must be HELLO")),
        None => return Err(Refusal::permanent("closed before HELLO")),
    };
    let nonce = auth::nonce();
    let proof = secret.map_or([0; proto::PROOF_LEN], |s| auth::intercept_proof(s, &copier_nonce, &nonce));
    let traits = proto::Traits { authenticates: secret.is_some(), forwarding, holds_early };
    let welcome = frame(|b| proto::encode_welcome(b, traits, &nonce, &proof), 64);
    wr.write_all(&welcome).await.map_err(|err| Refusal::transient(format!("write failed: {err}")))?;
    let second = tokio::time::timeout(HANDSHAKE_TIMEOUT, next_frame(rd, buf, incoming))
        .await
        .map_err(within("AUTH"))?
        .map_err(garbage)?;
    match (second, secret) {
        (Some(Incoming::Auth(proof)), Some(s)) if !auth::copier_proof_holds(s, &nonce, &copier_nonce, &proof) => {
            Err(Refusal::permanent("wrong secret (or none): this intercept requires copiers to prove theirs"))
        }
        (Some(Incoming::Auth(_)), _) => Ok(instance),
        (Some(_), _) => Err(Refusal::permanent("the frame after WELCOME must be AUTH")),
        (None, _) => Err(Refusal::permanent("closed before AUTH")),
    }
}

async fn connection(
    id: CopierId,
    stream: TcpStream,
    peer: SocketAddr,
    access: &Access,
    limits: Limits,
    routes: SharedRoutes,
    stats: Arc<Stats>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::with_capacity(16 * 1024);
    let holds_early = Routes::lock(&routes).holds_early();
    let secret = access.secret.as_deref();
    let instance = match handshake(&mut rd, &mut wr, &mut buf, secret, access.forwarding, holds_early).await {
        Ok(instance) => instance,
        Err(refusal) => {
            log::warn!("closing connection from {peer}: {}", refusal.reason);
            Stats::add(&stats.rejected, 1);
            let _ = tokio::time::timeout(CLOSE_DRAIN, wr.write_all(&bye(&refusal))).await;
            return;
        }
    };
    let link = Arc::new(CopierLink::new(wr));
    let flusher = AbortOnDrop(tokio::spawn({
        let link = Arc::clone(&link);
        async move { link.flush_when_writable().await }
    }));
    let superseded = Arc::new(Notify::new());
    if let Some(old) = Routes::lock(&routes).connect(id, instance, Arc::clone(&link), Arc::clone(&superseded)) {
        log::info!("copier {id} from {peer} replaces copier {old}, an older connection of the same process");
    }
    Stats::add(&stats.copiers, 1);
    log::info!("copier {id} connected from {peer}");

    // The addresses it declared (SPACE), if it did, and whether it announced any yet.
    let mut space: Option<ClientSpace> = None;
    let mut announced = false;
    let mut offered_solo = false;
    let outcome: Result<(), Refusal> = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(limits.idle_timeout, next_frame(&mut rd, &mut buf, incoming)) => next,
            _ = superseded.notified() => break Err(Refusal::transient("replaced by a newer connection of the same copier")),
        };
        let Ok(next) = next else {
            Stats::add(&stats.idle_closed, 1);
            break Err(Refusal::transient(format!("nothing received for {:?}", limits.idle_timeout)));
        };
        match next {
            Ok(Some(Incoming::Space(declared))) => {
                if space.is_some() || announced {
                    break Err(Refusal::permanent("SPACE comes once, before the first OWN"));
                }
                log::info!("copier {id} replays from {declared}");
                Routes::lock(&routes).spaces.insert(id, declared.clone());
                space = Some(declared);
            }
            Ok(Some(Incoming::WantPayload(bytes))) => {
                if announced {
                    break Err(Refusal::permanent("WANT_PAYLOAD comes before the first OWN"));
                }
                let most = Routes::lock(&routes).want_payload(id, bytes);
                stats.payload_wanted.store(u64::from(most), std::sync::atomic::Ordering::Relaxed);
                log::info!("copier {id} wants the first {bytes} bytes of each answer");
            }
            Ok(Some(Incoming::Own(entries))) => {
                announced = true;
                if let Some(outside) = space.as_ref().and_then(|s| entries.iter().find(|e| !s.contains(e))) {
                    Stats::add(&stats.claims_refused, 1);
                    let declared = space.as_ref().expect("checked");
                    break Err(Refusal::permanent(format!(
                        "{outside} is outside the client addresses this copier declared ({declared})"
                    )));
                }
                if let Err(refusal) = Routes::lock(&routes).own_all(id, &entries, &stats) {
                    Stats::add(&stats.claims_refused, 1);
                    break Err(refusal);
                }
            }
            Ok(Some(Incoming::Disown(entries))) => Routes::lock(&routes).disown_all(id, &entries),
            Ok(Some(Incoming::Solo)) => {
                if announced || offered_solo {
                    break Err(Refusal::permanent("SOLO comes once, before the first OWN"));
                }
                offered_solo = true;
                Routes::lock(&routes).offer_solo(id);
            }
            Ok(Some(Incoming::Sync(token))) => {
                // Every announcement before it is in effect: they were applied as they came.
                Routes::lock(&routes).synced(id);
                link.send(&frame(|b| proto::encode_sync(b, true, token), 16));
            }
            Ok(Some(Incoming::Ping)) => {}
            Ok(Some(Incoming::Bye(reason))) => {
                log::info!("copier {id} ({peer}) said goodbye: {reason}");
                break Ok(());
            }
            Ok(Some(Incoming::Hello { .. } | Incoming::Auth(_))) => {
                break Err(Refusal::permanent("a second handshake"))
            }
            Ok(Some(Incoming::Unexpected(kind))) => {
                break Err(Refusal::permanent(format!("a {kind} frame from a copier")))
            }
            Ok(None) => break Ok(()),
            Err(reason) => break Err(Refusal::permanent(reason)),
        }
    };
    let released = {
        let mut routes = Routes::lock(&routes);
        let released = routes.disconnect(id, instance);
        let most = routes.wants.values().copied().max().unwrap_or(0);
        stats.payload_wanted.store(u64::from(most), std::sync::atomic::Ordering::Relaxed);
        released
    };
    stats.copiers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(refusal) = &outcome {
        log::warn!("closing copier {id} ({peer}): {}", refusal.reason);
        Stats::add(&stats.rejected, 1);
        link.send(&bye(refusal));
    }
    link.drained(CLOSE_DRAIN).await;
    drop(flusher);
    log::info!("copier {id} disconnected; released {released} client endpoints");
    // The last reference to the link goes here (the routes let theirs go), closing the socket.
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    fn reply_to(port: u16) -> ReplyFacts {
        ReplyFacts { client: Endpoint::v4([10, 100, 1, 2], port), ..Default::default() }
    }

    /// A copier's connection that takes `room` frames, then drops.
    struct Recorder {
        frames: Mutex<Vec<Vec<u8>>>,
        room: usize,
    }

    impl Link for Recorder {
        fn send(&self, frame: &[u8]) -> bool {
            let mut frames = self.frames.lock().unwrap();
            let fits = frames.len() < self.room;
            if fits {
                frames.push(frame.to_vec());
            }
            fits
        }
    }

    /// Routes `batches` of two replies and one of one to a copier that owns 10.100.1.2.
    fn route_to_copier_with_room(room: usize, batches: usize) -> (Stats, Vec<u16>) {
        let (stats, mut routes) = (Stats::default(), Routes::default());
        let recorder = Arc::new(Recorder { frames: Mutex::new(Vec::new()), room });
        routes.connect(1, 1, Arc::clone(&recorder), Arc::default());
        routes.ownership.own(1, Endpoint::v4([10, 100, 1, 2], 0)).unwrap();
        for _ in 0..batches {
            routes.route(&[reply_to(1), reply_to(2)], &Payloads::default(), &stats);
        }
        routes.route(&[reply_to(3)], &Payloads::default(), &stats);
        let mut ports = Vec::new();
        for frame in recorder.frames.lock().unwrap().iter() {
            let Ok(Some((Message::Facts(records), used))) = proto::decode(frame) else { panic!("not one FACTS frame") };
            assert_eq!(used, frame.len());
            ports.extend(records.map(|r| r.client.port));
        }
        (stats, ports)
    }

    #[test]
    fn a_slow_copier_costs_a_counter_not_memory() {
        let (stats, ports) = route_to_copier_with_room(1, 10);
        // One frame fits; the other 9 batches (18 facts) and the last fact are dropped.
        assert_eq!(ports, [1, 2]);
        assert_eq!((stats.routed.load(Relaxed), stats.slow_copier_dropped.load(Relaxed)), (2, 19));
    }

    #[test]
    fn a_copier_that_keeps_up_gets_everything_in_order() {
        let (stats, ports) = route_to_copier_with_room(64, 10);
        assert_eq!((stats.routed.load(Relaxed), stats.slow_copier_dropped.load(Relaxed)), (21, 0));
        assert_eq!(ports.len(), 21);
        assert_eq!(ports.last(), Some(&3));
    }

    #[test]
    fn a_large_batch_goes_in_frames_of_at_most_max_records_and_the_unowned_are_counted() {
        let (stats, mut routes) = (Stats::default(), Routes::default());
        let recorder = Arc::new(Recorder { frames: Mutex::new(Vec::new()), room: 100 });
        routes.connect(7, 7, Arc::clone(&recorder), Arc::default());
        routes.ownership.own(7, Endpoint::v4([10, 100, 1, 2], 0)).unwrap();
        let mut batch: Vec<ReplyFacts> = (0..MAX_RECORDS as u16 + 5).map(reply_to).collect();
        batch.push(ReplyFacts { client: Endpoint::v4([10, 100, 1, 3], 1), ..Default::default() });
        routes.route(&batch, &Payloads::default(), &stats);
        let sizes: Vec<usize> = recorder.frames.lock().unwrap().iter().map(|f| f.len()).collect();
        let frame_of = |n: usize| proto::HEADER_LEN + 2 + n * proto::RECORD_LEN;
        assert_eq!(sizes, [frame_of(MAX_RECORDS), frame_of(5)]);
        assert_eq!((stats.routed.load(Relaxed), stats.unowned.load(Relaxed)), (MAX_RECORDS as u64 + 5, 1));
        assert_eq!(routes.disconnect(7, 7), 1, "its whole address");
        routes.route(&batch[..1], &Payloads::default(), &stats);
        assert_eq!(stats.unowned.load(Relaxed), 2, "a gone copier's replies are nobody's");
    }

    #[test]
    fn a_copier_that_wants_payload_gets_each_answers_first_bytes_and_the_others_none() {
        let (stats, mut routes) = (Stats::default(), Routes::default());
        let (wants, plain) = (
            Arc::new(Recorder { frames: Mutex::new(Vec::new()), room: 10 }),
            Arc::new(Recorder { frames: Mutex::new(Vec::new()), room: 10 }),
        );
        routes.connect(1, 1, Arc::clone(&wants), Arc::default());
        routes.connect(2, 2, Arc::clone(&plain), Arc::default());
        routes.ownership.own(1, Endpoint::v4([10, 100, 1, 2], 0)).unwrap();
        routes.ownership.own(2, Endpoint::v4([10, 100, 1, 3], 0)).unwrap();
        assert_eq!(routes.want_payload(1, 6), 6);
        let data = |last: u8, seq: u32, len: u16| ReplyFacts {
            client: Endpoint::v4([10, 100, 1, last], 40000),
            seq: common::seq::SeqNum(seq),
            payload_len: len,
            ..Default::default()
        };
        let batch = [data(2, 1, 4), data(2, 5, 4), data(3, 1, 4)];
        let mut payload = Payloads::default();
        for p in [&b"HTTP"[..], b"/1.1", b"HTTP"] {
            payload.push(p);
        }
        routes.route(&batch, &payload, &stats);
        let frames = wants.frames.lock().unwrap();
        let Ok(Some((Message::PayloadFacts(items), _))) = proto::decode(&frames[0]) else {
            panic!("not PAYLOAD_FACTS")
        };
        let got: Vec<(u32, Vec<u8>)> = items.map(|(f, p)| (f.seq.0, p.to_vec())).collect();
        assert_eq!(got, [(1, b"HTTP".to_vec()), (5, b"/1".to_vec())], "the answer's first 6 bytes");
        let frames = plain.frames.lock().unwrap();
        assert!(matches!(proto::decode(&frames[0]), Ok(Some((Message::Facts(r), _))) if r.len() == 1));
        assert_eq!((stats.payload_sent.load(Relaxed), stats.payload_cut.load(Relaxed)), (6, 2));
        assert_eq!(routes.want_payload(1, 0), 0, "none wanted any more");
    }

    #[test]
    fn a_reconnecting_process_replaces_its_own_connection_and_no_other() {
        let mut routes: Routes<Recorder> = Routes::default();
        let recorder = || Arc::new(Recorder { frames: Mutex::new(Vec::new()), room: 10 });
        let client = Endpoint::v4([10, 100, 1, 2], 40000);
        let old_close = Arc::new(Notify::new());
        assert_eq!(routes.connect(1, 0xaa, recorder(), Arc::clone(&old_close)), None);
        routes.ownership.own(1, client).unwrap();
        assert_eq!(routes.connect(2, 0xbb, recorder(), Arc::default()), None, "another process");
        assert!(routes.ownership.own(2, client).is_err(), "cannot take a live copier's endpoint");
        assert_eq!(routes.connect(3, 0xaa, recorder(), Arc::default()), Some(1), "the same process again");
        routes.ownership.own(3, client).unwrap();
        // The old connection's task ends later: it must not take the new one's entries along.
        assert_eq!(routes.disconnect(1, 0xaa), 0);
        assert_eq!(routes.ownership.owner(&client), Some(3));
        assert!(routes.instances.contains_key(&0xaa));
        let closed = tokio_test_notified(&old_close);
        assert!(closed, "the old connection was told to close");
    }

    fn syn_ack_to(port: u16) -> ReplyFacts {
        use common::tcp::flags::{ACK, SYN};
        ReplyFacts { flags: SYN | ACK, ..reply_to(port) }
    }

    /// The client ports of the FACTS frames `recorder` got.
    fn ports_sent(recorder: &Recorder) -> Vec<u16> {
        let mut ports = Vec::new();
        for frame in recorder.frames.lock().unwrap().iter() {
            let Ok(Some((Message::Facts(records), _))) = proto::decode(frame) else { panic!("not one FACTS frame") };
            ports.extend(records.map(|r| r.client.port));
        }
        ports
    }

    #[test]
    fn a_syn_ack_that_beats_its_own_goes_to_the_copier_with_the_own() {
        let (stats, mut routes) = (Stats::default(), Routes::default());
        assert!(routes.holds_early(), "an assistant host holds them");
        let recorder = Arc::new(Recorder { frames: Mutex::new(Vec::new()), room: 10 });
        routes.connect(1, 1, Arc::clone(&recorder), Arc::default());
        // The opening of 40001 and 40002, and a stray ACK to 40001 of a session gone before.
        routes.route(&[syn_ack_to(40001), reply_to(40001), syn_ack_to(40002)], &Payloads::default(), &stats);
        assert!(ports_sent(&recorder).is_empty());
        assert_eq!((stats.held_early.load(Relaxed), stats.unowned.load(Relaxed)), (2, 1));
        routes.own_all(1, &[Endpoint::v4([10, 100, 1, 2], 40001)], &stats).unwrap();
        assert_eq!(ports_sent(&recorder), [40001], "the SYN-ACK, with the OWN");
        routes.route(&[reply_to(40001)], &Payloads::default(), &stats);
        assert_eq!(ports_sent(&recorder), [40001, 40001], "then the replies that follow, in order");
        routes.own_all(1, &[Endpoint::v4([10, 100, 1, 2], 40001)], &stats).unwrap();
        assert_eq!(ports_sent(&recorder).len(), 2, "delivered once");
        assert_eq!(stats.routed.load(Relaxed), 2);
        assert_eq!(routes.early.len(), 1, "40002's waits for its own OWN");
    }

    #[test]
    fn a_held_syn_ack_no_own_comes_for_is_counted_unowned() {
        let (stats, mut routes) = (Stats::default(), Routes::<Recorder>::default());
        routes.started -= intercept_core::early::HOLD; // its clock: a hold ago
        routes.early.hold(&syn_ack_to(40001), Duration::ZERO);
        routes.route(&[reply_to(7)], &Payloads::default(), &stats);
        assert_eq!(stats.unowned.load(Relaxed), 2, "the expired SYN-ACK and the new stray reply");
        assert!(routes.early.is_empty());
    }

    struct NoMap;

    impl intercept_core::stealing::StolenSet for NoMap {
        fn insert(&mut self, _: Endpoint) -> io::Result<()> {
            Ok(())
        }
        fn remove(&mut self, _: Endpoint) {}
    }

    #[test]
    fn on_the_test_host_a_reply_nobody_owns_is_never_held() {
        let stats = Stats::default();
        let mut routes: Routes<Recorder> = Routes::stealing(Stealing::new(Box::new(NoMap), 16), 16);
        assert!(!routes.holds_early(), "copiers wait for SYNCED there");
        routes.route(&[syn_ack_to(40001)], &Payloads::default(), &stats);
        assert_eq!((stats.held_early.load(Relaxed), stats.unowned.load(Relaxed)), (0, 1));
    }

    /// Whether `notify` holds a permit (it was notified with no one waiting).
    /// The SOLE frames a recorder got, and the ports of its FACTS.
    fn sole_and_ports(recorder: &Recorder) -> (Vec<bool>, Vec<u16>) {
        let (mut sole, mut ports) = (Vec::new(), Vec::new());
        for frame in recorder.frames.lock().unwrap().iter() {
            match proto::decode(frame) {
                Ok(Some((Message::Sole(s), _))) => sole.push(s),
                Ok(Some((Message::Facts(records), _))) => ports.extend(records.map(|r| r.client.port)),
                other => panic!("unexpected {other:?}"),
            }
        }
        (sole, ports)
    }

    fn recorder() -> Arc<Recorder> {
        Arc::new(Recorder { frames: Mutex::new(Vec::new()), room: 100 })
    }

    #[test]
    fn a_lone_copier_that_offered_solo_gets_every_reply_in_its_space_and_its_owns_are_not_kept() {
        let (stats, mut routes) = (Stats::default(), Routes::default());
        let a = recorder();
        routes.connect(1, 1, Arc::clone(&a), Arc::default());
        let v4 = |a: [u8; 4]| Endpoint::v4(a, 0).addr;
        routes.spaces.insert(1, ClientSpace::new([(v4([10, 100, 1, 0]), v4([10, 100, 1, 255]))]));
        routes.offer_solo(1);
        routes.own_all(1, &[Endpoint::v4([10, 100, 1, 2], 40001)], &stats).unwrap();
        assert!(routes.ownership.is_empty(), "a sole copier's announcements are not recorded");
        let outside = ReplyFacts { client: Endpoint::v4([10, 100, 7, 2], 40003), ..Default::default() };
        routes.route(&[syn_ack_to(40001), reply_to(40002), outside], &Payloads::default(), &stats);
        assert_eq!(sole_and_ports(&a), (vec![true], vec![40001, 40002]));
        assert_eq!(
            (stats.routed.load(Relaxed), stats.unowned.load(Relaxed), stats.held_early.load(Relaxed)),
            (2, 1, 0),
            "a reply outside its space is nobody's"
        );
    }

    #[test]
    fn a_second_copier_has_the_sole_one_announce_and_it_keeps_the_unclaimed_until_its_sync() {
        let (stats, mut routes) = (Stats::default(), Routes::default());
        let (a, b) = (recorder(), recorder());
        routes.connect(1, 1, Arc::clone(&a), Arc::default());
        routes.offer_solo(1);
        routes.connect(2, 2, Arc::clone(&b), Arc::default());
        routes.own_all(2, &[Endpoint::v4([10, 100, 1, 2], 40002)], &stats).unwrap();
        routes.route(&[reply_to(40001), reply_to(40002)], &Payloads::default(), &stats);
        assert_eq!(sole_and_ports(&a), (vec![true, false], vec![40001]), "told to announce, and still the fallback");
        assert_eq!(sole_and_ports(&b), (vec![], vec![40002]));
        routes.own_all(1, &[Endpoint::v4([10, 100, 1, 2], 40001)], &stats).unwrap();
        routes.synced(1);
        routes.route(&[reply_to(40001), reply_to(40009)], &Payloads::default(), &stats);
        assert_eq!(sole_and_ports(&a).1, [40001, 40001], "by its OWN now");
        assert_eq!(stats.unowned.load(Relaxed), 1, "and what nobody owns is nobody's");
        routes.disconnect(2, 2);
        assert_eq!(sole_and_ports(&a).0, [true, false, true], "alone again");
        assert!(routes.ownership.is_empty());
    }

    #[test]
    fn a_copier_that_did_not_offer_solo_announces_as_ever() {
        let (stats, mut routes) = (Stats::default(), Routes::default());
        let a = recorder();
        routes.connect(1, 1, Arc::clone(&a), Arc::default());
        routes.route(&[reply_to(40001)], &Payloads::default(), &stats);
        assert_eq!(sole_and_ports(&a), (vec![], vec![]));
        assert_eq!(stats.unowned.load(Relaxed), 1);
    }

    fn tokio_test_notified(notify: &Notify) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async { tokio::time::timeout(Duration::from_millis(10), notify.notified()).await.is_ok() })
    }
}
