//! Hands captured frames to the worker that owns their session, chosen by a symmetric flow
//! hash so both directions of a session meet on one worker. Frames travel in batches: one
//! channel send per batch and worker, never one per packet.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc::error::TrySendError;

use super::worker::{Input, InputSender};
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

/// What a worker has not got to yet: the dispatcher's view of it, for [`Backpressure`].
#[derive(Debug, Default)]
pub struct Backlog {
    /// Sessions waiting for their turn to open; the worker publishes it after each pass.
    pub held: AtomicUsize,
    /// Captured frames handed to the worker (the dispatcher counts them).
    pub frames_sent: AtomicU64,
    /// Captured frames the worker has taken (it counts them).
    pub frames_taken: AtomicU64,
    /// The worker has ended (or panicked): nothing to wait for; sending finds it gone.
    pub closed: AtomicBool,
}

impl Backlog {
    /// Marks the backlog closed when dropped: the worker holds one for as long as it runs.
    pub fn close_on_drop(self: &Arc<Self>) -> impl Drop {
        struct Close(Arc<Backlog>);
        impl Drop for Close {
            fn drop(&mut self) {
                self.0.closed.store(true, Ordering::Relaxed);
            }
        }
        Close(Arc::clone(self))
    }

    fn frames_queued(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed).saturating_sub(self.frames_taken.load(Ordering::Relaxed))
    }
}

/// A capture file is read no faster than its sessions open: a worker that holds `limit`
/// sessions waiting for their turn (`--max-opening`), or has [`Backpressure::AHEAD`] frames
/// not yet taken, gets its next batch when it is below both. Unbounded read-ahead would start
/// every session of the file at once: memory grows with the file (until `-m` sheds sessions)
/// and the session tables outgrow the caches.
pub struct Backpressure {
    /// One per worker.
    pub backlogs: Vec<Arc<Backlog>>,
    pub limit: usize,
    /// Set when the copier stops: waiting ends.
    pub stop: Arc<AtomicBool>,
}

impl Backpressure {
    /// Frames a worker may have queued: enough to keep it busy between looks.
    pub const AHEAD: u64 = 4 * BATCH as u64;
    /// How often a waiting reader looks again: sessions open in round trips, so finer
    /// polling would only cost wake-ups.
    const POLL: Duration = Duration::from_millis(1);

    /// Waits until worker `w` is below the limits, or has ended, or the copier stops.
    fn wait_for(&self, w: usize) {
        let backlog = &self.backlogs[w];
        while (backlog.held.load(Ordering::Relaxed) >= self.limit || backlog.frames_queued() >= Self::AHEAD)
            && !self.stop.load(Ordering::Relaxed)
            && !backlog.closed.load(Ordering::Relaxed)
        {
            std::thread::sleep(Self::POLL);
        }
    }
}

pub struct Dispatch {
    workers: Vec<InputSender>,
    pending: Vec<Batch>,
    when_full: WhenFull,
    backpressure: Option<Backpressure>,
    /// Frames dropped at full worker queues.
    pub dropped: Arc<AtomicU64>,
}

impl Dispatch {
    pub fn new(workers: Vec<InputSender>, when_full: WhenFull) -> Self {
        Self::counting_into(workers, when_full, Arc::default())
    }

    /// A dispatcher that adds its drops to `dropped` (several readers, one counter).
    pub fn counting_into(workers: Vec<InputSender>, when_full: WhenFull, dropped: Arc<AtomicU64>) -> Self {
        assert!(!workers.is_empty(), "at least one worker");
        let pending = workers.iter().map(|_| Batch::default()).collect();
        Self { workers, pending, when_full, dropped, backpressure: None }
    }

    /// Batches for a worker that holds too many sessions wait (a capture file).
    pub fn with_backpressure(mut self, backpressure: Backpressure) -> Self {
        assert_eq!(backpressure.backlogs.len(), self.workers.len(), "one backlog per worker");
        self.backpressure = Some(backpressure);
        self
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
            let _ = w.blocking_send(Input::SourceDone);
        }
    }

    fn send(&mut self, w: usize) -> Result<(), WorkersGone> {
        let batch = std::mem::take(&mut self.pending[w]);
        if let Some(bp) = &self.backpressure {
            bp.wait_for(w);
            bp.backlogs[w].frames_sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        match self.when_full {
            WhenFull::Wait => self.workers[w].blocking_send(Input::Captured(batch)).map_err(|_| WorkersGone),
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
    use common::{endpoint::Endpoint, seq::SeqNum};

    use super::*;
    use crate::{
        engine::emit,
        runtime::worker::{input_queue, InputReceiver},
    };

    fn packet(src: Endpoint, dst: Endpoint) -> Vec<u8> {
        let mut out = Vec::new();
        let seg = emit::Segment { src, dst, seq: SeqNum(1), ack: SeqNum(0), flags: 2, window: 1, options: &[], payload: b"" };
        emit::write(&mut out, &seg);
        out
    }

    fn received(rx: &mut InputReceiver) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .flat_map(|i| match i {
                Input::Captured(b) => b.iter().map(|(_, _, p)| p.to_vec()).collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn both_directions_of_a_session_reach_the_same_worker_and_sessions_spread() {
        let (channels, mut receivers): (Vec<_>, Vec<_>) = (0..2).map(|_| input_queue(1024)).unzip();
        let mut d = Dispatch::new(channels, WhenFull::Wait);
        let server = Endpoint::v4([10, 0, 0, 1], 80);
        for port in 40000..40100 {
            let client = Endpoint::v4([10, 0, 0, 2], port);
            d.push(0, Link::Ip, &packet(client, server)).unwrap();
            d.push(0, Link::Ip, &packet(server, client)).unwrap();
        }
        d.flush().unwrap();
        let per_worker: Vec<_> = receivers.iter_mut().map(received).collect();
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
        let (tx, mut rx) = input_queue(1);
        let mut d = Dispatch::new(vec![tx], WhenFull::Drop);
        let p = packet(Endpoint::v4([10, 0, 0, 2], 1), Endpoint::v4([10, 0, 0, 1], 80));
        for _ in 0..3 * BATCH {
            d.push(0, Link::Ip, &p).unwrap();
        }
        assert_eq!(d.dropped.load(Ordering::Relaxed), 2 * BATCH as u64);
        assert_eq!(received(&mut rx).len(), BATCH);
        drop(rx);
        d.push(0, Link::Ip, &p).unwrap();
        assert!(d.flush().is_err(), "a gone worker is an error, not a silent loss");
    }

    fn backpressured(limit: usize) -> (Dispatch, InputReceiver, Arc<Backlog>, Arc<AtomicBool>) {
        let (tx, rx) = input_queue(64);
        let (backlog, stop) = (Arc::new(Backlog::default()), Arc::new(AtomicBool::new(false)));
        let bp = Backpressure { backlogs: vec![Arc::clone(&backlog)], limit, stop: Arc::clone(&stop) };
        (Dispatch::new(vec![tx], WhenFull::Wait).with_backpressure(bp), rx, backlog, stop)
    }

    fn one_frame() -> Vec<u8> {
        packet(Endpoint::v4([10, 0, 0, 2], 1), Endpoint::v4([10, 0, 0, 1], 80))
    }

    /// Pushes one frame and flushes it from another thread; returns when it was sent.
    fn send_one(mut d: Dispatch) -> std::thread::JoinHandle<Dispatch> {
        std::thread::spawn(move || {
            d.push(0, Link::Ip, &one_frame()).unwrap();
            d.flush().unwrap();
            d
        })
    }

    #[test]
    fn a_file_is_read_no_faster_than_the_worker_opens_sessions() {
        let (d, mut rx, backlog, _stop) = backpressured(4);
        let d = send_one(d).join().unwrap();
        assert_eq!(received(&mut rx).len(), 1, "below the limits batches go at once");
        backlog.frames_taken.store(1, Ordering::Relaxed);
        backlog.held.store(4, Ordering::Relaxed);
        let reader = send_one(d);
        std::thread::sleep(Duration::from_millis(50));
        assert!(received(&mut rx).is_empty(), "a worker holding the limit gets nothing more");
        backlog.held.store(3, Ordering::Relaxed);
        reader.join().unwrap();
        assert_eq!(received(&mut rx).len(), 1, "one session opened: the batch goes");
    }

    #[test]
    fn a_worker_gets_only_a_few_batches_ahead_of_what_it_took() {
        let (mut d, mut rx, backlog, _stop) = backpressured(usize::MAX);
        let p = one_frame();
        for _ in 0..Backpressure::AHEAD {
            d.push(0, Link::Ip, &p).unwrap();
        }
        assert_eq!(backlog.frames_sent.load(Ordering::Relaxed), Backpressure::AHEAD);
        let reader = send_one(d);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(received(&mut rx).len() as u64, Backpressure::AHEAD, "nothing beyond the read-ahead");
        backlog.frames_taken.store(BATCH as u64, Ordering::Relaxed);
        reader.join().unwrap();
        assert_eq!(received(&mut rx).len(), 1);
    }

    #[test]
    fn a_worker_that_ended_is_not_waited_for() {
        let (d, rx, backlog, _stop) = backpressured(1);
        backlog.held.store(1, Ordering::Relaxed);
        let worker = backlog.close_on_drop();
        let mut d = d;
        let reader = std::thread::spawn(move || {
            d.push(0, Link::Ip, &one_frame()).unwrap();
            d.flush()
        });
        std::thread::sleep(Duration::from_millis(20));
        drop((worker, rx));
        assert!(reader.join().unwrap().is_err(), "the send after the wait finds the worker gone");
    }

    #[test]
    fn stopping_ends_the_wait() {
        let (d, mut rx, backlog, stop) = backpressured(1);
        backlog.held.store(1, Ordering::Relaxed);
        let reader = send_one(d);
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert_eq!(received(&mut rx).len(), 1);
    }
}
