//! The copier's side of the intercept protocol (docs/architecture.md §3): one connection per intercept,
//! re-established with backoff after an intercept restarts, and a hub that announces every
//! client endpoint the sessions replay from, to all of them, again after each reconnect. An
//! intercept that holds early replies (an assistant host's) keeps a SYN-ACK that beats its OWN
//! until the OWN comes; to any other (on the test host) each batch of announcements is followed
//! by a SYNC, and the worker holds the batch's packets (its new SYNs) until every such intercept
//! answered SYNCED, so no SYN-ACK arrives unowned.
//! Reply facts go to the worker whose port class holds the reply's destination port. All of it
//! runs on the first worker's runtime (see [`super::worker`]).

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::TrySendError,
        Arc,
    },
    time::Duration,
};

use common::{
    auth,
    endpoint::Endpoint,
    facts::ReplyFacts,
    hash::Hasher,
    proto::{self, Message, MAX_ENTRIES},
};
use copier_engine::{rewrite::PortClass, Event};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use xdp_runtime::AbortOnDrop;

use super::worker::{split_token, sync_token, Announced, FactsBatch, FactsSender};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest a link waits for a worker's full facts queue before it drops the batch.
const FACTS_WAIT: Duration = Duration::from_secs(1);
/// A link that sent nothing for a whole period of this says PING: some frame leaves at least
/// every two periods, well within the intercepts' idle timeout.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Queued frames gathered into one write, at most about this many bytes.
const WRITE_BATCH: usize = 64 * 1024;

/// Counters of the intercept links.
#[derive(Default)]
pub struct LinkStats {
    pub connected: AtomicU64,
    pub reconnects: AtomicU64,
    pub facts: AtomicU64,
    /// Facts dropped because the worker's queue was full.
    pub facts_dropped: AtomicU64,
    /// Why an intercept refused this copier for good (wrong secret or version, endpoints owned
    /// by another copier): the copier stops, with this reason.
    pub refused: std::sync::Mutex<Option<String>>,
    /// Wakes whoever waits for a link to connect or be refused ([`LinkStats::wait_connected`]).
    changed: tokio::sync::Notify,
}

impl LinkStats {
    /// Waits until `wanted` intercepts are connected, one refused this copier, or `limit`
    /// passed; returns how many are connected. Woken by the links themselves, not by polling:
    /// a capture's replay starts the moment its intercepts are ready.
    pub async fn wait_connected(&self, wanted: usize, limit: Duration) -> usize {
        let ready =
            || self.connected.load(Relaxed) as usize >= wanted || self.refused.lock().expect("not poisoned").is_some();
        super::wait_until(&self.changed, limit, ready).await;
        self.connected.load(Relaxed) as usize
    }
}

/// Why a connection ended: retrying may help, or it cannot.
enum Ended {
    Transient(String),
    Permanent(String),
}

impl From<String> for Ended {
    fn from(reason: String) -> Self {
        Self::Transient(reason)
    }
}

enum Control {
    Connected(usize, Link),
    Disconnected(usize),
    /// Intercept `usize` has every announcement up to SYNC token `u64` in effect.
    Synced(usize, u64),
    /// Intercept `usize` says whether this copier is its only one (SOLE).
    Sole(usize, bool),
}

/// The hub's end of a connected intercept.
#[derive(Clone)]
struct Link {
    frames: mpsc::Sender<Vec<u8>>,
    /// It holds a SYN-ACK that beats its OWN (WELCOME said so): no SYNC needed.
    holds_early: bool,
    /// This copier is its only one (SOLE 1): it needs no OWN or DISOWN.
    sole: bool,
}

/// The SYNC after announcing everything again (SOLE 0): its SYNCED confirms no worker's batch.
const RESYNC_TOKEN: u64 = u64::MAX;

/// SOLO: this copier can go without announcing while it is an intercept's only one.
pub fn solo_frame() -> Vec<u8> {
    let mut buf = vec![0; proto::HEADER_LEN];
    let n = proto::encode_solo(&mut buf).expect("sized to fit");
    buf.truncate(n);
    buf
}

fn sync_frame(token: u64) -> Vec<u8> {
    let mut buf = vec![0; proto::HEADER_LEN + 8];
    let n = proto::encode_sync(&mut buf, false, token).expect("sized to fit");
    buf.truncate(n);
    buf
}

/// Announcement batches some intercept has not confirmed yet (SYNC sent, SYNCED not back), by
/// SYNC token: ordered by worker, then by the worker's batch number.
struct Pending {
    batches: std::collections::BTreeMap<u64, HashSet<usize>>,
    /// Each worker's latest batch.
    latest: Vec<u64>,
}

impl Pending {
    fn new(workers: usize) -> Self {
        Self { batches: Default::default(), latest: vec![0; workers] }
    }

    /// Every batch of `worker` before its oldest unconfirmed one is in effect everywhere.
    fn confirmed(&self, worker: u16) -> u64 {
        let mine = sync_token(worker, 0)..sync_token(worker, u64::MAX);
        self.batches.range(mine).next().map_or(self.latest[worker as usize], |(&oldest, _)| split_token(oldest).1 - 1)
    }

    fn confirm(&mut self, link: usize, token: u64) {
        if let Some(links) = self.batches.get_mut(&token) {
            links.remove(&link);
            if links.is_empty() {
                self.batches.remove(&token);
            }
        }
    }

    fn forget_link(&mut self, link: usize) {
        self.batches.retain(|_, links| {
            links.remove(&link);
            !links.is_empty()
        });
    }
}

/// What a batch of announcements changes at the intercepts, applied to `owned` (what they were
/// told so far): the endpoints owned now and not before, and those owned before and not now.
/// An endpoint released and claimed again in one batch (a flow's new incarnation on the same
/// replay endpoint) stays owned: sent as an OWN then a DISOWN, it would have been released.
///
/// One set operation per event, then, only for a batch with both claims and releases, a sort of
/// the two lists to net out an endpoint on both: a map of every endpoint's state before the
/// batch, kept for that rare endpoint, took a sixteenth of the worker at maximum replay speed.
fn net_changes(owned: &mut HashSet<Endpoint, Hasher>, events: Vec<Event>) -> (Vec<Endpoint>, Vec<Endpoint>) {
    let (mut own, mut disown) = (Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::Own(ep) if owned.insert(ep) => own.push(ep),
            Event::Disown(ep) if owned.remove(&ep) => disown.push(ep),
            _ => {}
        }
    }
    // An endpoint's changes alternate, so one changed twice is on both lists; it changed in all
    // if it changed more often one way, and then that way.
    if own.is_empty() || disown.is_empty() {
        return (own, disown);
    }
    let key = |ep: &Endpoint| (ep.addr, ep.port);
    own.sort_unstable_by_key(key);
    disown.sort_unstable_by_key(key);
    let (mut net_own, mut net_disown) = (Vec::with_capacity(own.len()), Vec::with_capacity(disown.len()));
    let (mut i, mut j) = (0, 0);
    while i < own.len() || j < disown.len() {
        let next = match (own.get(i), disown.get(j)) {
            (Some(a), Some(b)) => *if key(a) <= key(b) { a } else { b },
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => unreachable!(),
        };
        let claimed = own[i..].iter().take_while(|&&ep| ep == next).count();
        let released = disown[j..].iter().take_while(|&&ep| ep == next).count();
        (i, j) = (i + claimed, j + released);
        match claimed.cmp(&released) {
            std::cmp::Ordering::Greater => net_own.push(next),
            std::cmp::Ordering::Less => net_disown.push(next),
            std::cmp::Ordering::Equal => {}
        }
    }
    (net_own, net_disown)
}

fn endpoint_frames(own: bool, endpoints: &[Endpoint]) -> Vec<Vec<u8>> {
    endpoints
        .chunks(MAX_ENTRIES)
        .map(|chunk| {
            let mut buf = vec![0; proto::HEADER_LEN + 2 + chunk.len() * proto::ENTRY_LEN];
            let n = proto::encode_endpoints(&mut buf, own, chunk).expect("sized to fit");
            buf.truncate(n);
            buf
        })
        .collect()
}

/// The WANT_PAYLOAD frame for `--payload-bytes`, if any are wanted.
pub fn want_payload_frame(bytes: u32) -> Option<Vec<u8>> {
    (bytes > 0).then(|| {
        let mut buf = vec![0; proto::HEADER_LEN + 4];
        let n = proto::encode_want_payload(&mut buf, bytes).expect("checked by the flag's range");
        buf.truncate(n);
        buf
    })
}

/// The SPACE frame that declares `ranges` (the `-c` addresses), or none if they take more ranges
/// than one frame holds: the intercepts then take the copier's word for its endpoints.
pub fn space_frame(ranges: &[([u8; 16], [u8; 16])]) -> Option<Vec<u8>> {
    let mut buf = vec![0; proto::HEADER_LEN + 2 + ranges.len() * proto::RANGE_LEN];
    let n = proto::encode_space(&mut buf, ranges).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Runs the hub and one connection task per intercept until `events` closes. `announced` and
/// `workers` hold one entry per worker, in worker order. `first`, sent first on every
/// connection, declares the client addresses the copier replays from, the payload it wants,
/// and that it can go without announcing while it is an intercept's only copier (SOLO).
pub async fn run(
    intercepts: Vec<SocketAddr>,
    secret: Option<Arc<[u8]>>,
    first: Vec<Vec<u8>>,
    mut events: mpsc::Receiver<(u64, Vec<Event>)>,
    announced: Vec<Arc<Announced>>,
    workers: Vec<FactsSender>,
    stats: Arc<LinkStats>,
) {
    let (ctl_tx, mut ctl_rx) = mpsc::channel(64);
    for (i, addr) in intercepts.iter().copied().enumerate() {
        tokio::spawn(connection(i, addr, secret.clone(), ctl_tx.clone(), workers.clone(), Arc::clone(&stats)));
    }
    drop(ctl_tx);
    let mut owned: HashSet<Endpoint, Hasher> = HashSet::default();
    let mut links: Vec<Option<Link>> = vec![None; intercepts.len()];
    let mut pending = Pending::new(announced.len());
    let publish = |pending: &Pending, links: &[Option<Link>]| {
        let syncing = links.iter().flatten().any(|l| !l.holds_early);
        for (w, a) in announced.iter().enumerate() {
            a.set_confirmation_needed(syncing);
            a.mark_confirmed(pending.confirmed(w as u16));
        }
    };
    loop {
        tokio::select! {
            Some((token, evs)) = events.recv() => {
                let (own, disown) = net_changes(&mut owned, evs);
                // Built only if some link needs them: where this copier is sole, none does.
                let frames: Vec<Vec<u8>> = if links.iter().flatten().any(|l| !l.sole) {
                    endpoint_frames(true, &own).into_iter().chain(endpoint_frames(false, &disown)).collect()
                } else {
                    Vec::new()
                };
                let mut waiting = HashSet::new();
                // Built only if some link needs it: intercepts that hold early replies do not.
                let sync: Vec<Vec<u8>> =
                    links.iter().flatten().any(|l| !l.holds_early).then(|| sync_frame(token)).into_iter().collect();
                for (i, slot) in links.iter_mut().enumerate() {
                    let Some(link) = slot else { continue };
                    let syncs = if link.holds_early { &sync[..0] } else { &sync[..] };
                    let announcements = if link.sole { &frames[..0] } else { &frames[..] };
                    if announcements.iter().chain(syncs).any(|f| link.frames.try_send(f.clone()).is_err()) {
                        // It cannot keep up with announcements: reconnecting re-announces all.
                        log::warn!("intercept {} is not reading; dropping the connection", intercepts[i]);
                        *slot = None;
                    } else if !syncs.is_empty() {
                        waiting.insert(i);
                    }
                }
                let (worker, batch) = split_token(token);
                pending.latest[worker as usize] = batch;
                if !waiting.is_empty() {
                    pending.batches.insert(token, waiting);
                }
                publish(&pending, &links);
            }
            Some(ctl) = ctl_rx.recv() => match ctl {
                Control::Connected(i, link) => {
                    let all: Vec<Endpoint> = owned.iter().copied().collect();
                    let frames = first.iter().cloned().chain(endpoint_frames(true, &all));
                    if frames.into_iter().all(|f| link.frames.try_send(f).is_ok()) {
                        links[i] = Some(link);
                        publish(&pending, &links);
                    }
                }
                Control::Disconnected(i) => {
                    links[i] = None;
                    pending.forget_link(i);
                    publish(&pending, &links);
                }
                Control::Synced(i, token) => {
                    pending.confirm(i, token);
                    publish(&pending, &links);
                }
                Control::Sole(i, sole) => {
                    let Some(link) = &mut links[i] else { continue };
                    link.sole = sole;
                    if !sole {
                        // Everything it owns, as on connecting; the SYNC tells the intercept
                        // that its replies need no fallback any more.
                        let all: Vec<Endpoint> = owned.iter().copied().collect();
                        let frames = endpoint_frames(true, &all).into_iter().chain([sync_frame(RESYNC_TOKEN)]);
                        if !frames.into_iter().all(|f| link.frames.try_send(f).is_ok()) {
                            log::warn!("intercept {} is not reading; dropping the connection", intercepts[i]);
                            links[i] = None;
                        }
                    }
                }
            },
            else => break,
        }
    }
}

/// Hands each reply to the worker whose port class holds its client's port.
async fn deliver_all<'a>(
    workers: &[FactsSender],
    stats: &LinkStats,
    replies: impl Iterator<Item = (ReplyFacts, &'a [u8])>,
) {
    let mut per_worker: Vec<FactsBatch> = vec![FactsBatch::default(); workers.len()];
    for (f, payload) in replies {
        per_worker[PortClass::of(f.client.port, workers.len() as u16) as usize].push(f, payload);
    }
    for (facts, worker) in per_worker.into_iter().zip(workers).filter(|(f, _)| !f.is_empty()) {
        let n = facts.len() as u64;
        stats.facts.fetch_add(n, Relaxed);
        if !deliver(worker, facts).await {
            stats.facts_dropped.fetch_add(n, Relaxed);
        }
    }
}

/// Hands facts to a worker, waiting (without reading more from the intercept, so TCP pushes
/// back on it) while the worker's queue is full; false if it stayed full for [`FACTS_WAIT`]
/// or the worker is gone.
async fn deliver(worker: &FactsSender, mut facts: FactsBatch) -> bool {
    let deadline = tokio::time::Instant::now() + FACTS_WAIT;
    loop {
        match worker.try_send(facts) {
            Ok(()) => return true,
            Err(TrySendError::Full(back)) if tokio::time::Instant::now() < deadline => {
                facts = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => return false,
        }
    }
}

/// Why a connection attempt or a connection ended.
async fn session(
    addr: SocketAddr,
    secret: Option<&[u8]>,
    instance: u64,
    i: usize,
    ctl: &mpsc::Sender<Control>,
    workers: &[FactsSender],
    stats: &LinkStats,
) -> Result<(), Ended> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let nonce = auth::nonce();
    let mut hello = [0; 64];
    let n = proto::encode_hello(&mut hello, instance, &nonce).expect("sized to fit");
    wr.write_all(&hello[..n]).await.map_err(|e| format!("write failed: {e}"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(4096);
    // After WELCOME the write half belongs to a writer task, ended with this session.
    let mut wr = Some(wr);
    let mut writer: Option<AbortOnDrop> = None;
    loop {
        loop {
            let (message, used) = match proto::decode(&buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(Ended::Permanent(format!("intercept sent garbage: {e}"))),
            };
            match message {
                Message::Welcome { authenticates, forwarding, holds_early, nonce: theirs, proof, .. }
                    if writer.is_none() =>
                {
                    if forwarding {
                        log::warn!("intercept {addr}: its host forwards IP, so replies it does not steal may reach the real clients (copier doctor says more)");
                    }
                    let proof = auth::copier_answer(secret, authenticates, &nonce, &theirs, &proof)
                        .map_err(|why| Ended::Permanent(why.into()))?;
                    let mut auth_frame = [0; 64];
                    let n = proto::encode_auth(&mut auth_frame, &proof).expect("sized to fit");
                    let mut w = wr.take().expect("welcomed once");
                    w.write_all(&auth_frame[..n]).await.map_err(|e| format!("write failed: {e}"))?;
                    log::info!("connected to intercept {addr}");
                    stats.connected.fetch_add(1, Relaxed);
                    stats.changed.notify_waiters();
                    let out_rx = std::mem::replace(&mut out_rx, mpsc::channel(1).1);
                    writer = Some(AbortOnDrop(tokio::spawn(write_frames(w, out_rx))));
                    let link = Link { frames: out_tx.clone(), holds_early, sole: false };
                    ctl.send(Control::Connected(i, link)).await.map_err(|_| "shutting down".to_string())?;
                }
                Message::Facts(records) if writer.is_some() => {
                    deliver_all(workers, stats, records.map(|f| (f, &[][..]))).await;
                }
                Message::PayloadFacts(records) if writer.is_some() => {
                    deliver_all(workers, stats, records).await;
                }
                Message::Synced(batch) => {
                    let _ = ctl.send(Control::Synced(i, batch)).await;
                }
                Message::Sole(sole) if writer.is_some() => {
                    log::debug!(
                        "intercept {addr}: this copier is {}its only one",
                        if sole { "" } else { "no longer " }
                    );
                    let _ = ctl.send(Control::Sole(i, sole)).await;
                }
                Message::Bye { permanent: true, reason } => {
                    return Err(Ended::Permanent(format!("the intercept refused us: {reason}")));
                }
                Message::Bye { reason, .. } => return Err(format!("intercept said goodbye: {reason}").into()),
                other => return Err(Ended::Permanent(format!("unexpected frame from the intercept: {other:?}"))),
            }
            buf.drain(..used);
        }
        buf.reserve(16 * 1024);
        match rd.read_buf(&mut buf).await {
            Ok(0) => return Err(Ended::Transient("connection closed".into())),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}").into()),
        }
    }
}

/// Writes the hub's frames to an intercept, all that are queued in one write: an OWN and its
/// SYNC written apart were two segments, each waking the intercept (and, on the way, its
/// host's receive). A tick that finds nothing written since the one before sends a PING.
async fn write_frames(mut w: tokio::net::tcp::OwnedWriteHalf, mut frames: mpsc::Receiver<Vec<u8>>) {
    let mut ping = [0; 8];
    let n = proto::encode_ping(&mut ping).expect("sized to fit");
    // Idleness is checked on a tick, not timed per frame: a timeout around each receive cost
    // a clock read and a timer per announcement.
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut out = Vec::with_capacity(WRITE_BATCH);
    let mut wrote = false;
    loop {
        out.clear();
        tokio::select! {
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                out.extend_from_slice(&frame);
                while out.len() < WRITE_BATCH {
                    let Ok(frame) = frames.try_recv() else { break };
                    out.extend_from_slice(&frame);
                }
                wrote = true;
            }
            _ = tick.tick() => {
                if !std::mem::take(&mut wrote) {
                    out.extend_from_slice(&ping[..n]);
                }
            }
        }
        if !out.is_empty() && w.write_all(&out).await.is_err() {
            break;
        }
    }
}

async fn connection(
    i: usize,
    addr: SocketAddr,
    secret: Option<Arc<[u8]>>,
    ctl: mpsc::Sender<Control>,
    workers: Vec<FactsSender>,
    stats: Arc<LinkStats>,
) {
    let instance = auth::instance();
    let mut backoff = BACKOFF_MIN;
    let mut last_reason = String::new();
    loop {
        let was_connected = stats.connected.load(Relaxed);
        let outcome = session(addr, secret.as_deref(), instance, i, &ctl, &workers, &stats).await;
        if ctl.is_closed() {
            return;
        }
        let connected = stats.connected.load(Relaxed) > was_connected;
        if connected {
            stats.connected.fetch_sub(1, Relaxed);
            stats.reconnects.fetch_add(1, Relaxed);
            let _ = ctl.send(Control::Disconnected(i)).await;
            backoff = BACKOFF_MIN;
        }
        let reason = match outcome {
            Ok(()) => "closed".into(),
            Err(Ended::Transient(reason)) => reason,
            Err(Ended::Permanent(reason)) => {
                log::error!("intercept {addr}: {reason}; not retrying");
                stats.refused.lock().expect("not poisoned").get_or_insert(format!("intercept {addr}: {reason}"));
                stats.changed.notify_waiters();
                return;
            }
        };
        if connected || reason != last_reason {
            log::warn!("intercept {addr}: {reason}; retrying");
            last_reason = reason;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::v4([10, 0, 0, 2], port)
    }

    #[test]
    fn an_endpoint_released_and_claimed_again_in_one_batch_stays_owned() {
        let mut owned: HashSet<Endpoint, Hasher> = HashSet::default();
        assert_eq!(net_changes(&mut owned, vec![Event::Own(ep(1)), Event::Own(ep(2))]), (vec![ep(1), ep(2)], vec![]));
        // A new incarnation of flow 1 on the same replay endpoint, and flow 2 ending.
        let batch = vec![Event::Disown(ep(1)), Event::Own(ep(1)), Event::Disown(ep(2)), Event::Own(ep(3))];
        assert_eq!(net_changes(&mut owned, batch), (vec![ep(3)], vec![ep(2)]), "1 is not released");
        assert!(owned.contains(&ep(1)) && !owned.contains(&ep(2)));
        // A session that came and went within one batch: nothing to tell.
        assert_eq!(net_changes(&mut owned, vec![Event::Own(ep(4)), Event::Disown(ep(4))]), (vec![], vec![]));
        assert_eq!(net_changes(&mut owned, vec![Event::Disown(ep(9))]), (vec![], vec![]), "never owned");
    }

    /// What a batch changes, by definition: each endpoint's state before it and after.
    fn model(owned: &mut HashSet<Endpoint, Hasher>, events: &[Event]) -> (Vec<Endpoint>, Vec<Endpoint>) {
        let before = owned.clone();
        for e in events {
            match *e {
                Event::Own(ep) => owned.insert(ep),
                Event::Disown(ep) => owned.remove(&ep),
            };
        }
        let mut own: Vec<_> = owned.difference(&before).copied().collect();
        let mut disown: Vec<_> = before.difference(owned).copied().collect();
        own.sort_unstable_by_key(|ep| ep.port);
        disown.sort_unstable_by_key(|ep| ep.port);
        (own, disown)
    }

    proptest::proptest! {
        #[test]
        fn net_changes_are_each_endpoints_state_after_the_batch_against_before(
            batches in proptest::collection::vec(
                proptest::collection::vec((proptest::bool::ANY, 0u16..6), 0..12), 1..8),
        ) {
            let (mut owned, mut expected): (HashSet<Endpoint, Hasher>, HashSet<Endpoint, Hasher>) = Default::default();
            for batch in batches {
                let events: Vec<Event> =
                    batch.iter().map(|&(own, port)| if own { Event::Own(ep(port)) } else { Event::Disown(ep(port)) }).collect();
                let want = model(&mut expected, &events);
                let (mut own, mut disown) = net_changes(&mut owned, events);
                own.sort_unstable_by_key(|ep| ep.port);
                disown.sort_unstable_by_key(|ep| ep.port);
                proptest::prop_assert_eq!((own, disown), want);
                proptest::prop_assert_eq!(&owned, &expected);
            }
        }
    }

    #[test]
    fn each_worker_waits_only_for_its_own_unconfirmed_announcements() {
        let mut p = Pending::new(2);
        for (worker, batch) in [(0, 1), (0, 2), (1, 1)] {
            p.latest[worker as usize] = batch;
            p.batches.insert(sync_token(worker, batch), HashSet::from([0, 1]));
        }
        assert_eq!((p.confirmed(0), p.confirmed(1)), (0, 0));
        p.confirm(0, sync_token(1, 1));
        p.confirm(1, sync_token(1, 1));
        assert_eq!((p.confirmed(0), p.confirmed(1)), (0, 1), "worker 1 confirmed by both links");
        p.confirm(0, sync_token(0, 1));
        assert_eq!(p.confirmed(0), 0, "link 1 has not confirmed worker 0's batch 1");
        p.forget_link(1);
        assert_eq!(p.confirmed(0), 1, "batch 2 still waits for link 0");
        p.confirm(0, sync_token(0, 2));
        assert_eq!(p.confirmed(0), 2);
    }
}
