//! Hands captured frames to the worker that owns their session, chosen by a symmetric flow
//! hash so both directions of a session meet on one worker. Frames travel in batches: one
//! channel send per batch and worker, never one per packet.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    mpsc::{SyncSender, TrySendError},
    Arc,
};

use super::worker::Input;
use crate::{
    engine::{
        capture::{endpoints, Link},
        rewrite::symmetric_flow_hash,
    },
    pcap::{Batch, BATCH},
};

/// Every worker has gone: nothing more can be replayed.
#[derive(Debug, thiserror::Error)]
#[error("the workers have stopped")]
pub struct WorkersGone;

/// What to do when a worker's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait (a capture file: nothing is lost, the file is read slower).
    Wait,
    /// Drop the batch and count it (live capture: the ring must keep draining).
    Drop,
}

pub struct Dispatch {
    workers: Vec<SyncSender<Input>>,
    pending: Vec<Batch>,
    when_full: WhenFull,
    /// Frames dropped at full worker queues.
    pub dropped: Arc<AtomicU64>,
}

impl Dispatch {
    pub fn new(workers: Vec<SyncSender<Input>>, when_full: WhenFull) -> Self {
        Self::counting_into(workers, when_full, Arc::default())
    }

    /// A dispatcher that adds its drops to `dropped` (several readers, one counter).
    pub fn counting_into(workers: Vec<SyncSender<Input>>, when_full: WhenFull, dropped: Arc<AtomicU64>) -> Self {
        assert!(!workers.is_empty(), "at least one worker");
        let pending = workers.iter().map(|_| Batch::default()).collect();
        Self { workers, pending, when_full, dropped }
    }

    /// The worker owning the session of `frame` (worker 0 for what is not TCP: its engine
    /// counts it).
    pub fn worker_of(&self, link: Link, frame: &[u8]) -> usize {
        match self.workers.len() {
            1 => 0,
            n => endpoints(link, frame).map_or(0, |(a, b)| (symmetric_flow_hash(&a, &b) % n as u64) as usize),
        }
    }

    pub fn push(&mut self, ts_us: u64, link: Link, frame: &[u8]) -> Result<(), WorkersGone> {
        let w = self.worker_of(link, frame);
        self.pending[w].push(ts_us, link, frame);
        if self.pending[w].len() >= BATCH {
            self.send(w)?;
        }
        Ok(())
    }

    /// Frames waiting for their batch to fill.
    pub fn pending(&self) -> usize {
        self.pending.iter().map(Batch::len).sum()
    }

    /// Sends every partial batch.
    pub fn flush(&mut self) -> Result<(), WorkersGone> {
        for w in 0..self.workers.len() {
            if !self.pending[w].is_empty() {
                self.send(w)?;
            }
        }
        Ok(())
    }

    /// Sends what is pending, then tells every worker the source is done.
    pub fn finish(mut self) {
        let _ = self.flush();
        for w in &self.workers {
            let _ = w.send(Input::SourceDone);
        }
    }

    fn send(&mut self, w: usize) -> Result<(), WorkersGone> {
        let batch = std::mem::take(&mut self.pending[w]);
        match self.when_full {
            WhenFull::Wait => self.workers[w].send(Input::Captured(batch)).map_err(|_| WorkersGone),
            WhenFull::Drop => match self.workers[w].try_send(Input::Captured(batch)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(Input::Captured(mut batch))) => {
                    self.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    self.pending[w] = batch;
                    Ok(())
                }
                Err(_) => Err(WorkersGone),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{sync_channel, Receiver};

    use common::{endpoint::Endpoint, seq::SeqNum};

    use super::*;
    use crate::engine::emit;

    fn packet(src: Endpoint, dst: Endpoint) -> Vec<u8> {
        let mut out = Vec::new();
        let seg = emit::Segment { src, dst, seq: SeqNum(1), ack: SeqNum(0), flags: 2, window: 1, options: &[], payload: b"" };
        emit::write(&mut out, &seg);
        out
    }

    fn received(rx: &Receiver<Input>) -> Vec<Vec<u8>> {
        rx.try_iter()
            .flat_map(|i| match i {
                Input::Captured(b) => b.iter().map(|(_, _, p)| p.to_vec()).collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn both_directions_of_a_session_reach_the_same_worker_and_sessions_spread() {
        let (channels, receivers): (Vec<_>, Vec<_>) = (0..2).map(|_| sync_channel(1024)).unzip();
        let mut d = Dispatch::new(channels, WhenFull::Wait);
        let server = Endpoint::v4([10, 0, 0, 1], 80);
        for port in 40000..40100 {
            let client = Endpoint::v4([10, 0, 0, 2], port);
            d.push(0, Link::Ip, &packet(client, server)).unwrap();
            d.push(0, Link::Ip, &packet(server, client)).unwrap();
        }
        d.flush().unwrap();
        let per_worker: Vec<_> = receivers.iter().map(received).collect();
        assert!(per_worker.iter().all(|p| p.len() > 40), "{:?}", per_worker.iter().map(Vec::len).collect::<Vec<_>>());
        for packets in &per_worker {
            for p in packets {
                let (a, b) = endpoints(Link::Ip, p).unwrap();
                let reverse = packet(b, a);
                assert!(packets.contains(&reverse), "the other direction of {a:?}-{b:?} went elsewhere");
            }
        }
    }

    #[test]
    fn live_capture_drops_and_counts_what_a_full_worker_cannot_take() {
        let (tx, rx) = sync_channel(1);
        let mut d = Dispatch::new(vec![tx], WhenFull::Drop);
        let p = packet(Endpoint::v4([10, 0, 0, 2], 1), Endpoint::v4([10, 0, 0, 1], 80));
        for _ in 0..3 * BATCH {
            d.push(0, Link::Ip, &p).unwrap();
        }
        assert_eq!(d.dropped.load(Ordering::Relaxed), 2 * BATCH as u64);
        assert_eq!(received(&rx).len(), BATCH);
        drop(rx);
        d.push(0, Link::Ip, &p).unwrap();
        assert!(d.flush().is_err(), "a gone worker is an error, not a silent loss");
    }
}
