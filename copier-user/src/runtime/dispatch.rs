//! Hands captured frames to the worker that owns their session, chosen by a symmetric flow
//! hash so both directions of a session meet on one worker. Frames travel in batches: one
//! channel send per batch and worker, never one per packet.
//!
//! Live capture must keep draining its ring: [`Dispatch::push`] never waits, and a batch a
//! full worker cannot take is dropped and counted. A capture file loses nothing: it is read
//! by a task ([`Dispatch::push_waiting`]) that waits for room and for [`Backpressure`].

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc::error::TrySendError;

use super::worker::{Input, InputSender};
use copier_engine::{
    capture::{endpoints, Link},
    rewrite::symmetric_flow_hash,
};

use crate::pcap::{Batch, BATCH};

/// Every worker has gone: nothing more can be replayed.
#[derive(Debug, thiserror::Error)]
#[error("the workers have stopped")]
pub struct WorkersGone;

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
    async fn wait_for(&self, w: usize) {
        let backlog = &self.backlogs[w];
        while (backlog.held.load(Ordering::Relaxed) >= self.limit || backlog.frames_queued() >= Self::AHEAD)
            && !self.stop.load(Ordering::Relaxed)
            && !backlog.closed.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Self::POLL).await;
        }
    }
}

pub struct Dispatch {
    workers: Vec<InputSender>,
    pending: Vec<Batch>,
    /// The capture file's round (`--loop`), given to every batch.
    round: u16,
    backpressure: Option<Backpressure>,
    /// Frames dropped at full worker queues.
    pub dropped: Arc<AtomicU64>,
}

impl Dispatch {
    pub fn new(workers: Vec<InputSender>) -> Self {
        Self::counting_into(workers, Arc::default())
    }

    /// A dispatcher that adds its drops to `dropped` (several readers, one counter).
    pub fn counting_into(workers: Vec<InputSender>, dropped: Arc<AtomicU64>) -> Self {
        assert!(!workers.is_empty(), "at least one worker");
        let pending = workers.iter().map(|_| Batch::default()).collect();
        Self { workers, pending, round: 0, dropped, backpressure: None }
    }

    /// Batches for a worker that holds too many sessions wait, in [`Self::push_waiting`].
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

    /// Live capture: a full batch goes to its worker at once, or is dropped (and counted) if
    /// the worker's queue is full.
    pub fn push(&mut self, ts_us: u64, link: Link, frame: &[u8]) -> Result<(), WorkersGone> {
        match self.add(ts_us, link, frame) {
            Some(w) => self.try_send(w),
            None => Ok(()),
        }
    }

    /// A capture file: a full batch waits for room in its worker's queue and for the
    /// worker's backpressure.
    pub async fn push_waiting(&mut self, ts_us: u64, link: Link, frame: &[u8]) -> Result<(), WorkersGone> {
        match self.add(ts_us, link, frame) {
            Some(w) => self.send_waiting(w).await,
            None => Ok(()),
        }
    }

    /// Adds a frame to its worker's batch; returns the worker if the batch is full.
    fn add(&mut self, ts_us: u64, link: Link, frame: &[u8]) -> Option<usize> {
        let w = self.worker_of(link, frame);
        if self.pending[w].is_empty() {
            self.pending[w].round = self.round;
        }
        self.pending[w].push(ts_us, link, frame);
        (self.pending[w].len() >= BATCH).then_some(w)
    }

    /// Frames waiting for their batch to fill.
    pub fn pending(&self) -> usize {
        self.pending.iter().map(Batch::len).sum()
    }

    /// Sends every partial batch, as [`Self::push`] does.
    pub fn flush(&mut self) -> Result<(), WorkersGone> {
        for w in 0..self.workers.len() {
            if !self.pending[w].is_empty() {
                self.try_send(w)?;
            }
        }
        Ok(())
    }

    /// Sends every partial batch, as [`Self::push_waiting`] does.
    pub async fn flush_waiting(&mut self) -> Result<(), WorkersGone> {
        for w in 0..self.workers.len() {
            if !self.pending[w].is_empty() {
                self.send_waiting(w).await?;
            }
        }
        Ok(())
    }

    /// Ends a round of the capture file: what follows belongs to the next (`--loop`).
    pub async fn next_round(&mut self) -> Result<(), WorkersGone> {
        self.flush_waiting().await?;
        self.round = self.round.saturating_add(1);
        Ok(())
    }

    /// Sends what is pending, then tells every worker the source is done.
    pub async fn finish(mut self) {
        let _ = self.flush_waiting().await;
        for w in &self.workers {
            let _ = w.send(Input::SourceDone).await;
        }
    }

    fn try_send(&mut self, w: usize) -> Result<(), WorkersGone> {
        let batch = std::mem::take(&mut self.pending[w]);
        match self.workers[w].try_send(Input::Captured(batch)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Input::Captured(mut batch))) => {
                self.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                self.pending[w] = batch;
                Ok(())
            }
            Err(_) => Err(WorkersGone),
        }
    }

    async fn send_waiting(&mut self, w: usize) -> Result<(), WorkersGone> {
        let batch = std::mem::take(&mut self.pending[w]);
        if let Some(bp) = &self.backpressure {
            bp.wait_for(w).await;
            bp.backlogs[w].frames_sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        self.workers[w].send(Input::Captured(batch)).await.map_err(|_| WorkersGone)
    }
}

#[cfg(test)]
mod tests {
    use common::{endpoint::Endpoint, seq::SeqNum};

    use super::*;
    use copier_engine::emit;

    use crate::runtime::worker::{input_queue, InputReceiver};

    fn packet(src: Endpoint, dst: Endpoint) -> Vec<u8> {
        let mut out = Vec::new();
        let seg =
            emit::Segment { src, dst, seq: SeqNum(1), ack: SeqNum(0), flags: 2, window: 1, options: &[], payload: b"" };
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
        let mut d = Dispatch::new(channels);
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
        let mut d = Dispatch::new(vec![tx]);
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
        (Dispatch::new(vec![tx]).with_backpressure(bp), rx, backlog, stop)
    }

    fn one_frame() -> Vec<u8> {
        packet(Endpoint::v4([10, 0, 0, 2], 1), Endpoint::v4([10, 0, 0, 1], 80))
    }

    /// Runs a file reader's `f` on a thread of its own, as the copier runs it on a worker's.
    fn reader<T: Send + 'static>(
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
        })
    }

    /// Pushes one frame and flushes it, waiting as a file's reader does; returns when it was sent.
    fn send_one(mut d: Dispatch) -> std::thread::JoinHandle<Dispatch> {
        reader(async move {
            d.push_waiting(0, Link::Ip, &one_frame()).await.unwrap();
            d.flush_waiting().await.unwrap();
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
        let (d, mut rx, backlog, _stop) = backpressured(usize::MAX);
        let d = reader(async move {
            let mut d = d;
            for _ in 0..Backpressure::AHEAD {
                d.push_waiting(0, Link::Ip, &one_frame()).await.unwrap();
            }
            d
        })
        .join()
        .unwrap();
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
        let reader = reader(async move {
            d.push_waiting(0, Link::Ip, &one_frame()).await.unwrap();
            d.flush_waiting().await
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
