//! The TCP server copiers connect to (docs/architecture.md §3).
//!
//! One task per copier connection reads its announcements and applies them to the shared
//! [`Routes`] at once, so a SYNCED it answers covers everything the copier sent before. The
//! AF_XDP workers route each batch of replies under the same lock and write the facts straight
//! into the owning copier's socket; what a socket does not take waits, bounded, for the
//! connection's flusher (see [`intercept_core::outbound`]). A peer that sends garbage, an oversized frame,
//! a wrong version or a wrong secret gets a BYE with the reason and is closed; nothing it sends
//! can stop the server.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use common::{
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
    outbound::{Outbound, Sent},
    router::{CopierId, Ownership, MAX_OWNED_PER_COPIER},
};

use crate::stats::Stats;

/// Bytes held for one copier beyond what its socket took (about 16 000 facts) before its facts
/// are dropped and counted.
pub const MAX_PENDING_BYTES: usize = 1 << 20;
/// Time a new connection has to say HELLO.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Who owns which client endpoint, and the copiers' connections: what routing a reply needs.
/// Shared under one lock, taken once per batch of replies and once per announcement frame.
pub struct Routes<L = CopierLink> {
    ownership: Ownership,
    links: HashMap<CopierId, Arc<L>, Hasher>,
    /// A batch's replies per copier (vectors reused).
    grouped: HashMap<CopierId, Vec<ReplyFacts>, Hasher>,
    /// Encoding buffer (reused).
    frame: Vec<u8>,
}

/// The routes, shared by the AF_XDP workers and the connections.
pub type SharedRoutes = Arc<Mutex<Routes>>;

impl<L> Default for Routes<L> {
    fn default() -> Self {
        Self {
            ownership: Ownership::default(),
            links: HashMap::default(),
            grouped: HashMap::default(),
            frame: Vec::new(),
        }
    }
}

impl Routes {
    pub fn lock(routes: &SharedRoutes) -> MutexGuard<'_, Routes> {
        routes.lock().expect("no router panics holding it")
    }
}

impl<L: Link> Routes<L> {
    /// Sends every reply of a batch to the copier that owns its client, counting what nobody
    /// owns and what a slow copier could not take.
    pub fn route(&mut self, batch: &[ReplyFacts], stats: &Stats) {
        self.grouped.values_mut().for_each(Vec::clear);
        Stats::add(&stats.unowned, self.ownership.route(batch, &mut self.grouped) as u64);
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

    fn connect(&mut self, id: CopierId, link: Arc<L>) {
        self.links.insert(id, link);
    }

    /// Forgets a copier and everything it owned; returns how many endpoints that was.
    fn disconnect(&mut self, id: CopierId) -> usize {
        self.links.remove(&id);
        self.grouped.remove(&id);
        self.ownership.remove_copier(id)
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn frame(encode: impl FnOnce(&mut [u8]) -> Result<usize, proto::ProtoError>, capacity: usize) -> Vec<u8> {
    let mut buf = vec![0; capacity];
    let n = encode(&mut buf).expect("frames we build fit their buffers");
    buf.truncate(n);
    buf
}

fn bye(reason: &str) -> Vec<u8> {
    frame(|b| proto::encode_bye(b, reason), proto::HEADER_LEN + proto::MAX_REASON_LEN)
}

/// Serves copiers on `listener` until the process stops; the AF_XDP workers route replies
/// through `routes`.
pub async fn serve(listener: TcpListener, secret: Option<Arc<[u8]>>, routes: SharedRoutes, stats: Arc<Stats>) {
    let mut next_id: CopierId = 1;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                log::warn!("accepting a copier connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        tokio::spawn(connection(id, stream, peer, secret.clone(), Arc::clone(&routes), Arc::clone(&stats)));
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
    Hello(Vec<u8>),
    Own(Vec<Endpoint>),
    Disown(Vec<Endpoint>),
    Bye(String),
    Sync(u64),
    Unexpected(&'static str),
}

fn incoming(m: Message<'_>) -> Incoming {
    match m {
        Message::Hello { secret } => Incoming::Hello(secret.to_vec()),
        Message::Own(entries) => Incoming::Own(entries.collect()),
        Message::Disown(entries) => Incoming::Disown(entries.collect()),
        Message::Bye(reason) => Incoming::Bye(reason.to_owned()),
        Message::Welcome { .. } => Incoming::Unexpected("WELCOME"),
        Message::Facts(_) => Incoming::Unexpected("FACTS"),
        Message::Sync(token) => Incoming::Sync(token),
        Message::Synced(_) => Incoming::Unexpected("SYNCED"),
    }
}

async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut Vec<u8>,
    secret: Option<&[u8]>,
) -> Result<(), String> {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, next_frame(rd, buf, incoming))
        .await
        .map_err(|_| format!("no HELLO within {HANDSHAKE_TIMEOUT:?}"))??;
    match first {
        Some(Incoming::Hello(offered)) => {
            if let Some(secret) = secret {
                if !same_secret(secret, &offered) {
                    return Err("wrong secret".into());
                }
            }
        }
        Some(_) => return Err("the first frame must be HELLO".into()),
        None => return Err("closed before HELLO".into()),
    }
    let welcome = frame(proto::encode_welcome, 16);
    wr.write_all(&welcome).await.map_err(|err| format!("write failed: {err}"))
}

async fn connection(
    id: CopierId,
    stream: TcpStream,
    peer: SocketAddr,
    secret: Option<Arc<[u8]>>,
    routes: SharedRoutes,
    stats: Arc<Stats>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::with_capacity(16 * 1024);
    if let Err(reason) = handshake(&mut rd, &mut wr, &mut buf, secret.as_deref()).await {
        log::warn!("closing connection from {peer}: {reason}");
        Stats::add(&stats.rejected, 1);
        let _ = wr.write_all(&bye(&reason)).await;
        return;
    }
    let link = Arc::new(CopierLink::new(wr));
    let flusher = AbortOnDrop(tokio::spawn({
        let link = Arc::clone(&link);
        async move { link.flush_when_writable().await }
    }));
    Routes::lock(&routes).connect(id, Arc::clone(&link));
    Stats::add(&stats.copiers, 1);
    log::info!("copier {id} connected from {peer}");

    let mut announced = 0usize;
    let outcome: Result<(), String> = loop {
        match next_frame(&mut rd, &mut buf, incoming).await {
            Ok(Some(Incoming::Own(entries))) => {
                announced += entries.len();
                if announced > MAX_OWNED_PER_COPIER {
                    break Err(format!("announced more than {MAX_OWNED_PER_COPIER} client endpoints"));
                }
                if let Err(err) = Routes::lock(&routes).ownership.own_all(id, &entries) {
                    log::warn!("{err}; ignoring the rest of its announcement");
                }
            }
            Ok(Some(Incoming::Disown(entries))) => {
                announced = announced.saturating_sub(entries.len());
                Routes::lock(&routes).ownership.disown_all(id, &entries);
            }
            Ok(Some(Incoming::Sync(token))) => {
                // Every announcement before it is in effect: they were applied as they came.
                link.send(&frame(|b| proto::encode_sync(b, true, token), 16));
            }
            Ok(Some(Incoming::Bye(reason))) => {
                log::info!("copier {id} ({peer}) said goodbye: {reason}");
                break Ok(());
            }
            Ok(Some(Incoming::Hello(_))) => break Err("a second HELLO".into()),
            Ok(Some(Incoming::Unexpected(kind))) => break Err(format!("a {kind} frame from a copier")),
            Ok(None) => break Ok(()),
            Err(reason) => break Err(reason),
        }
    };
    let released = Routes::lock(&routes).disconnect(id);
    stats.copiers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(reason) = &outcome {
        log::warn!("closing copier {id} ({peer}): {reason}");
        Stats::add(&stats.rejected, 1);
        link.send(&bye(reason));
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
        routes.connect(1, Arc::clone(&recorder));
        routes.ownership.own(1, Endpoint::v4([10, 100, 1, 2], 0)).unwrap();
        for _ in 0..batches {
            routes.route(&[reply_to(1), reply_to(2)], &stats);
        }
        routes.route(&[reply_to(3)], &stats);
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
        routes.connect(7, Arc::clone(&recorder));
        routes.ownership.own(7, Endpoint::v4([10, 100, 1, 2], 0)).unwrap();
        let mut batch: Vec<ReplyFacts> = (0..MAX_RECORDS as u16 + 5).map(reply_to).collect();
        batch.push(ReplyFacts { client: Endpoint::v4([10, 100, 1, 3], 1), ..Default::default() });
        routes.route(&batch, &stats);
        let sizes: Vec<usize> = recorder.frames.lock().unwrap().iter().map(|f| f.len()).collect();
        let frame_of = |n: usize| proto::HEADER_LEN + 2 + n * proto::RECORD_LEN;
        assert_eq!(sizes, [frame_of(MAX_RECORDS), frame_of(5)]);
        assert_eq!((stats.routed.load(Relaxed), stats.unowned.load(Relaxed)), (MAX_RECORDS as u64 + 5, 1));
        assert_eq!(routes.disconnect(7), 1, "its whole address");
        routes.route(&batch[..1], &stats);
        assert_eq!(stats.unowned.load(Relaxed), 2, "a gone copier's replies are nobody's");
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
