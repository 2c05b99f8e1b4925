//! The TCP server copiers connect to (DESIGN.md §3).
//!
//! One task per copier connection reads its announcements; one router task owns the ownership
//! table and the copiers' outbound queues, so neither needs a lock. Each copier's queue is
//! bounded: when a copier reads too slowly its facts are dropped and counted, never buffered
//! without limit. A peer that sends garbage, an oversized frame, a wrong version or a wrong
//! secret gets a BYE with the reason and is closed; nothing it sends can stop the server.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use common::{
    endpoint::Endpoint,
    facts::ReplyFacts,
    proto::{self, Message, MAX_FRAME_LEN, MAX_RECORDS},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::mpsc::{self, error::TrySendError},
};

use crate::{
    router::{CopierId, Hasher, Ownership, MAX_OWNED_PER_COPIER},
    stats::Stats,
};

/// Frames (of up to [`MAX_RECORDS`] facts each) queued for one copier before its facts are dropped.
pub const COPIER_QUEUE_FRAMES: usize = 256;
/// Time a new connection has to say HELLO.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

enum Control {
    Connected { id: CopierId, peer: SocketAddr, queue: mpsc::Sender<Vec<u8>> },
    Own { id: CopierId, entries: Vec<Endpoint> },
    Disown { id: CopierId, entries: Vec<Endpoint> },
    /// Answer SYNCED once everything this copier sent before is in effect (it is: the router
    /// handles control messages in order).
    Sync { id: CopierId, token: u64 },
    Disconnected { id: CopierId },
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

/// Serves copiers on `listener` until the process stops; facts arrive on `facts`.
pub async fn serve(listener: TcpListener, secret: Option<Arc<[u8]>>, facts: mpsc::Receiver<Vec<ReplyFacts>>, stats: Arc<Stats>) {
    let (control_tx, control_rx) = mpsc::channel(1024);
    tokio::spawn(route(control_rx, facts, Arc::clone(&stats)));
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
        tokio::spawn(connection(id, stream, peer, secret.clone(), control_tx.clone(), Arc::clone(&stats)));
    }
}

async fn route(mut control: mpsc::Receiver<Control>, mut facts: mpsc::Receiver<Vec<ReplyFacts>>, stats: Arc<Stats>) {
    let mut ownership = Ownership::default();
    let mut queues: HashMap<CopierId, mpsc::Sender<Vec<u8>>, Hasher> = HashMap::default();
    let mut grouped: HashMap<CopierId, Vec<ReplyFacts>, Hasher> = HashMap::default();
    loop {
        tokio::select! {
            // Announcements first: a reply must not race ahead of the OWN that claims it.
            biased;
            Some(c) = control.recv() => match c {
                Control::Connected { id, peer, queue } => {
                    log::info!("copier {id} connected from {peer}");
                    queues.insert(id, queue);
                    Stats::add(&stats.copiers, 1);
                }
                Control::Own { id, entries } => {
                    for e in entries {
                        if let Err(err) = ownership.own(id, e) {
                            log::warn!("{err}; ignoring the rest of its announcement");
                            break;
                        }
                    }
                }
                Control::Disown { id, entries } => entries.into_iter().for_each(|e| ownership.disown(id, e)),
                Control::Sync { id, token } => {
                    if let Some(queue) = queues.get(&id) {
                        let _ = queue.try_send(frame(|b| proto::encode_sync(b, true, token), 16));
                    }
                }
                Control::Disconnected { id } => {
                    if queues.remove(&id).is_some() {
                        stats.copiers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    grouped.remove(&id);
                    let released = ownership.remove_copier(id);
                    log::info!("copier {id} disconnected; released {released} client endpoints");
                }
            },
            Some(batch) = facts.recv() => {
                grouped.values_mut().for_each(Vec::clear);
                Stats::add(&stats.unowned, ownership.route(&batch, &mut grouped) as u64);
                for (id, replies) in &grouped {
                    let Some(queue) = queues.get(id) else { continue };
                    for chunk in replies.chunks(MAX_RECORDS) {
                        let n = chunk.len() as u64;
                        let frame = frame(|b| proto::encode_facts(b, chunk), 4 + 3 + chunk.len() * proto::RECORD_LEN);
                        match queue.try_send(frame) {
                            Ok(()) => Stats::add(&stats.routed, n),
                            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => Stats::add(&stats.slow_copier_dropped, n),
                        }
                    }
                }
            },
            else => break,
        }
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

async fn handshake(rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf, buf: &mut Vec<u8>, secret: Option<&[u8]>) -> Result<(), String> {
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
    control: mpsc::Sender<Control>,
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
    let (queue, mut outbound) = mpsc::channel::<Vec<u8>>(COPIER_QUEUE_FRAMES);
    if control.send(Control::Connected { id, peer, queue: queue.clone() }).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });

    let mut announced = 0usize;
    let outcome: Result<(), String> = loop {
        match next_frame(&mut rd, &mut buf, incoming).await {
            Ok(Some(Incoming::Own(entries))) => {
                announced += entries.len();
                if announced > MAX_OWNED_PER_COPIER {
                    break Err(format!("announced more than {MAX_OWNED_PER_COPIER} client endpoints"));
                }
                let _ = control.send(Control::Own { id, entries }).await;
            }
            Ok(Some(Incoming::Disown(entries))) => {
                announced = announced.saturating_sub(entries.len());
                let _ = control.send(Control::Disown { id, entries }).await;
            }
            Ok(Some(Incoming::Sync(token))) => {
                let _ = control.send(Control::Sync { id, token }).await;
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
    if let Err(reason) = &outcome {
        log::warn!("closing copier {id} ({peer}): {reason}");
        Stats::add(&stats.rejected, 1);
        let _ = queue.send(bye(reason)).await;
    }
    drop(queue);
    let _ = control.send(Control::Disconnected { id }).await;
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    fn reply_to(port: u16) -> ReplyFacts {
        ReplyFacts { client: Endpoint::v4([10, 100, 1, 2], port), ..Default::default() }
    }

    /// Runs the router with one copier whose queue holds `capacity` frames and is never read.
    async fn router_with_stalled_copier(capacity: usize, batches: usize) -> (Arc<Stats>, mpsc::Receiver<Vec<u8>>) {
        let stats = Arc::new(Stats::default());
        let (control_tx, control_rx) = mpsc::channel(16);
        let (facts_tx, facts_rx) = mpsc::channel(16);
        let router = tokio::spawn(route(control_rx, facts_rx, Arc::clone(&stats)));
        let (queue, outbound) = mpsc::channel(capacity);
        control_tx.send(Control::Connected { id: 1, peer: "10.0.0.1:1".parse().unwrap(), queue }).await.unwrap();
        control_tx.send(Control::Own { id: 1, entries: vec![Endpoint::v4([10, 100, 1, 2], 0)] }).await.unwrap();
        for _ in 0..batches {
            facts_tx.send(vec![reply_to(1), reply_to(2)]).await.unwrap();
        }
        facts_tx.send(vec![reply_to(3)]).await.unwrap();
        drop((control_tx, facts_tx));
        router.await.unwrap();
        (stats, outbound)
    }

    #[tokio::test]
    async fn a_slow_copier_costs_a_counter_not_memory() {
        let (stats, mut outbound) = router_with_stalled_copier(1, 10).await;
        // One frame fits the queue; the other 9 batches (18 facts) and the last fact are dropped.
        assert_eq!(stats.routed.load(Relaxed), 2);
        assert_eq!(stats.slow_copier_dropped.load(Relaxed), 19);
        let frame = outbound.recv().await.unwrap();
        assert!(matches!(proto::decode(&frame), Ok(Some((Message::Facts(r), _))) if r.len() == 2));
        assert!(outbound.recv().await.is_none(), "nothing else was queued");
    }

    #[tokio::test]
    async fn a_copier_that_keeps_up_gets_everything_in_order() {
        let (stats, mut outbound) = router_with_stalled_copier(64, 10).await;
        assert_eq!((stats.routed.load(Relaxed), stats.slow_copier_dropped.load(Relaxed)), (21, 0));
        let mut ports = Vec::new();
        while let Some(frame) = outbound.recv().await {
            let Ok(Some((Message::Facts(records), _))) = proto::decode(&frame) else { panic!("not FACTS") };
            ports.extend(records.map(|r| r.client.port));
        }
        assert_eq!(ports.len(), 21);
        assert_eq!(ports.last(), Some(&3));
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
