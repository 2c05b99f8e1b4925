//! The worker: one thread that owns a session engine, feeds it captured packets and reply
//! facts, runs its timers, and transmits what it builds.
//!
//! Each worker waits in a single-threaded async runtime of its own, and the first worker's
//! also runs the intercept links and a capture file's (or copy mode's ring) reader: the facts
//! and frames they hand over reach that worker without waking another thread: a thread in
//! between was woken for every batch and woke the worker in turn (docs/bench.md, "Design
//! choices").

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::{
    mpsc::{self as async_mpsc, error::TryRecvError},
    Notify,
};

use copier_engine::{exchange::Exchanges, Counters, Engine, Event};
use xdp_runtime::tx::Transmit;

use super::dispatch::Backlog;
use crate::pcap::Batch;

/// What a worker is given.
pub enum Input {
    Captured(Batch),
    /// Reply facts are waiting in the worker's facts queue.
    Wake,
    /// The capture file is done: finish the open sessions (within the grace) and stop.
    SourceDone,
    /// A new `-r` and `-n` for the sessions that start from now on (SIGHUP, `--load-file`).
    Load {
        rate: u8,
        multiply: u16,
    },
}

/// Reply facts for a worker, in batches.
pub type FactsBatch = copier_engine::Replies;

/// Where a worker's input comes from: the live readers (threads that never wait), a capture
/// file's reader (a task that waits for room) and its facts doorbell.
pub type InputSender = async_mpsc::Sender<Input>;
pub type InputReceiver = async_mpsc::Receiver<Input>;

/// A worker's input queue of `capacity` entries.
pub fn input_queue(capacity: usize) -> (InputSender, InputReceiver) {
    async_mpsc::channel(capacity)
}

/// Work a worker's runtime carries besides its own: the intercept links, a file's reader.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the intercept links put a worker's reply facts: a queue of its own, drained before
/// captured input, so a capture file that keeps the input queue full (maximum speed) cannot
/// crowd out the replies its sessions wait for (it did: a third of 760 000 facts dropped at
/// 100 000 sessions); and a doorbell on the input queue that wakes an idle worker, rung once
/// per drain.
#[derive(Clone)]
pub struct FactsSender {
    facts: SyncSender<FactsBatch>,
    doorbell: InputSender,
    /// Set while a wake-up is on its way: one doorbell per drain, not one per batch.
    rung: Arc<AtomicBool>,
}

impl FactsSender {
    /// Queues a batch; a full queue hands it back (the caller waits and retries).
    pub fn try_send(&self, facts: FactsBatch) -> Result<(), TrySendError<FactsBatch>> {
        self.facts.try_send(facts)?;
        if !self.rung.swap(true, Ordering::AcqRel) && self.doorbell.try_send(Input::Wake).is_err() {
            // The input queue is full: the worker is busy and drains the facts every pass.
            self.rung.store(false, Ordering::Release);
        }
        Ok(())
    }
}

/// The worker's end of its facts queue.
pub struct FactsReceiver {
    facts: Receiver<FactsBatch>,
    rung: Arc<AtomicBool>,
}

impl FactsReceiver {
    /// Hands up to `max` queued batches to `f`; returns how many there were.
    fn drain(&self, max: usize, mut f: impl FnMut(FactsBatch)) -> usize {
        // Cleared before draining: a batch queued from here on rings again. Acquire: every
        // batch queued before the doorbell that set it is visible to the drain.
        self.rung.swap(false, Ordering::AcqRel);
        let mut batches = 0;
        while let Some(facts) = (batches < max).then(|| self.facts.try_recv().ok()).flatten() {
            f(facts);
            batches += 1;
        }
        batches
    }
}

/// A worker's facts queue of `capacity` batches, ringing `doorbell` (its input queue).
pub fn facts_queue(doorbell: InputSender, capacity: usize) -> (FactsSender, FactsReceiver) {
    let (facts, rx) = std::sync::mpsc::sync_channel(capacity);
    let rung = Arc::new(AtomicBool::new(false));
    (FactsSender { facts, doorbell, rung: Arc::clone(&rung) }, FactsReceiver { facts: rx, rung })
}

/// Announcement batches handed to the hub, numbered; the hub says up to which batch every
/// connected intercept that needs it confirmed them (SYNCED), so a SYN does not leave before
/// the OWN that claims its replies is in effect. Intercepts that hold early replies need none.
#[derive(Default)]
pub struct Announced {
    confirmed: AtomicU64,
    changed: Notify,
    /// Some connected intercept drops a SYN-ACK that beats its OWN: claims wait for SYNCED.
    confirmation_needed: AtomicBool,
}

impl Announced {
    pub fn set_confirmation_needed(&self, needed: bool) {
        self.confirmation_needed.store(needed, Ordering::Release);
    }

    fn confirmation_needed(&self) -> bool {
        self.confirmation_needed.load(Ordering::Acquire)
    }

    pub fn mark_confirmed(&self, batch: u64) {
        self.confirmed.fetch_max(batch, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Waits (as a task: the links may run on this very thread) until `batch` is confirmed.
    async fn wait_confirmed(&self, batch: u64, timeout: Duration) {
        super::wait_until(&self.changed, timeout, || self.confirmed.load(Ordering::Acquire) >= batch).await;
    }
}

/// A SYNC token: the worker's index in the top 16 bits, its announcement batch below.
pub fn sync_token(worker: u16, batch: u64) -> u64 {
    (worker as u64) << 48 | (batch & TOKEN_BATCH)
}

/// The worker and batch of a SYNC token.
pub fn split_token(token: u64) -> (u16, u64) {
    ((token >> 48) as u16, token & TOKEN_BATCH)
}

const TOKEN_BATCH: u64 = (1 << 48) - 1;

/// Counts a worker out of [`Worker::running`] when dropped, also when it panicked.
struct Done(Arc<AtomicUsize>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the stats line reads.
#[derive(Default)]
pub struct Shared {
    /// CPU time of the worker thread, microseconds.
    pub cpu_us: AtomicU64,
    pub counters: Mutex<Counters>,
    /// What each target answered; published less often than the counters (it holds the
    /// latency histograms).
    pub exchanges: Mutex<Exchanges>,
    pub active: Mutex<(usize, usize)>,
    pub tx_errors: Mutex<u64>,
    /// What the capture file's reader waits on (see [`super::dispatch::Backpressure`]).
    pub backlog: Arc<Backlog>,
}

pub struct Worker {
    /// Which of the workers this is (its port class and SYNC tokens).
    pub index: u16,
    /// The core it is pinned to, if any.
    pub core: Option<usize>,
    pub engine: Engine,
    pub tx: Transmit,
    pub inputs: InputReceiver,
    pub facts: FactsReceiver,
    pub events: tokio::sync::mpsc::Sender<(u64, Vec<Event>)>,
    pub announced: Arc<Announced>,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
    /// After the source is done, how long the open sessions may go without one of them
    /// finishing before the rest are reset, unless some are still retransmitting and the test
    /// server still answers (a large replay drains for as long as it drains).
    pub grace: Duration,
    /// The first worker's: the intercept links and a capture file's reader (the live ring
    /// reader is spawned onto its runtime once the capture starts).
    pub tasks: Vec<Task>,
    /// Workers still replaying: the one running the tasks keeps them up until this is 0.
    pub running: Arc<AtomicUsize>,
}

/// How often the stats the main thread reads are refreshed (locks and a clock syscall: not
/// once per batch).
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
/// How often the exchange records (histograms, tens of KiB) are copied for the main thread.
const PUBLISH_EXCHANGES_EVERY: Duration = Duration::from_millis(500);
/// Facts batches handed to the engine per loop pass at most.
const FACTS_PER_PASS: usize = 256;
/// Longest sleep between timer checks.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Announcements on their way to the intercepts. Claims go at once (the packets that follow
/// need their replies routed); releases alone wait up to [`RELEASE_EVERY`] to travel
/// together, as sessions end one by one: until then the intercepts route a gone session's
/// stray replies here, where they count as unmatched, as they would anyway.
#[derive(Default)]
struct Announcements {
    /// Not yet sent, in order.
    pending: Vec<Event>,
    /// When the oldest pending one was made.
    since: Option<Instant>,
    /// Batches sent (the SYNC token's batch number).
    sent: u64,
    /// Send whatever is pending at the next flush (the worker stops).
    release_now: bool,
}

/// Longest a release waits for company.
const RELEASE_EVERY: Duration = Duration::from_millis(10);

impl Announcements {
    /// Moves `fresh` behind what is pending and returns the batch to send now, if one is due,
    /// and whether it holds a claim (which the packets must wait for).
    fn take(&mut self, fresh: &mut Vec<Event>, now: Instant) -> Option<(Vec<Event>, bool)> {
        // Pending ones are releases only: a claim never waits.
        let claims = fresh.iter().any(|e| matches!(e, Event::Own(_)));
        if !fresh.is_empty() {
            self.since.get_or_insert(now);
            self.pending.append(fresh);
        }
        let due = claims || self.release_now || self.since.is_some_and(|t| now.duration_since(t) >= RELEASE_EVERY);
        if self.pending.is_empty() || !due {
            return None;
        }
        self.since = None;
        Some((std::mem::take(&mut self.pending), claims))
    }
}

/// Longest a batch's packets wait for the intercepts to confirm its announcements (a LAN round
/// trip is far less; a dead-but-connected intercept must not stall replay).
const ANNOUNCE_WAIT: Duration = Duration::from_millis(10);

impl Worker {
    /// A worker's runtime: built before its thread starts, so that others may spawn tasks on
    /// it through its handle (the first worker's carries the live capture's ring reader).
    pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }

    /// Runs on `runtime` until stopped, or until the source is done and its sessions finished
    /// (and, with tasks to run, until every worker is).
    pub fn run(mut self, runtime: tokio::runtime::Runtime) {
        if let Some(core) = self.core {
            xdp_runtime::pin_to(core);
        }
        runtime.block_on(async move {
            let tasks: Vec<_> = self.tasks.drain(..).map(tokio::spawn).collect();
            {
                let _done = Done(Arc::clone(&self.running));
                self.replay().await;
            }
            if !tasks.is_empty() {
                while self.running.load(Ordering::Acquire) > 0 && !self.stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(MAX_WAIT).await;
                }
            }
        });
    }

    async fn replay(&mut self) {
        // Even a panic closes it: the capture file's reader must not wait for a dead worker.
        let _closed = self.shared.backlog.close_on_drop();
        let start = Instant::now();
        let since_start = |t: Instant| t.duration_since(start).as_micros() as u64;
        // When the source ended, or when a session last finished after that.
        let mut source_done: Option<Instant> = None;
        let mut active = usize::MAX;
        let mut announcements = Announcements::default();
        let mut published = Instant::now();
        let mut exchanges_published = Instant::now();
        let mut last_reply = Instant::now();
        let mut frames_taken = 0u64;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            // The clock is read once per pass, and again only after a wait: every time the
            // engine sees in a pass is the pass's (reads were 3 % of a busy worker's profile).
            let mut t = Instant::now();
            if let Some(at) = source_done.as_mut() {
                let now_active = self.engine.active_sessions();
                if now_active < active {
                    (active, *at) = (now_active, t);
                }
                if now_active == 0 {
                    break;
                }
                if t.duration_since(*at) >= self.grace {
                    // Sessions still retransmitting to a test server that still answers end by
                    // delivering or by their give-up limit, as a real client's would; idle
                    // ones, or a silent test server, end the replay here.
                    if t.duration_since(last_reply) >= self.grace || self.engine.sessions_awaiting_ack() == 0 {
                        break;
                    }
                    *at = t;
                }
            }
            // Replies first: they complete handshakes and open pacing gates.
            let replied = self.take_facts(since_start(t));
            if replied > 0 {
                last_reply = t;
            }
            let wait = if replied > 0 {
                Duration::ZERO
            } else {
                self.engine
                    .next_deadline()
                    .map(|d| Duration::from_micros(d.saturating_sub(since_start(t))))
                    .unwrap_or(MAX_WAIT)
                    .min(MAX_WAIT)
            };
            let first = match self.inputs.try_recv() {
                Ok(input) => Some(input),
                Err(TryRecvError::Empty) if wait.is_zero() => None,
                Err(TryRecvError::Empty) => {
                    let input = tokio::select! {
                        biased;
                        input = self.inputs.recv() => input,
                        _ = tokio::time::sleep(wait) => None,
                    };
                    t = Instant::now();
                    input
                }
                Err(TryRecvError::Disconnected) => {
                    source_done.get_or_insert(t);
                    tokio::time::sleep(wait).await;
                    t = Instant::now();
                    None
                }
            };
            let now = since_start(t);
            // Take what else is waiting, a bounded number, then run timers and flush.
            for input in first.into_iter().chain(std::iter::from_fn(|| self.inputs.try_recv().ok()).take(64)) {
                match input {
                    Input::Captured(batch) => {
                        frames_taken += batch.len() as u64;
                        // Capture times: the file's, or the kernel's monotonic clock (live).
                        self.engine.on_captured_batch(now, batch.round, batch.iter());
                    }
                    Input::Wake => {}
                    Input::Load { rate, multiply } => self.engine.set_load(rate, multiply),
                    Input::SourceDone => {
                        source_done.get_or_insert(t);
                    }
                }
            }
            self.engine.on_timer(now);
            self.flush(&mut announcements, t).await;
            self.shared.backlog.held.store(self.engine.held_sessions(), Ordering::Relaxed);
            self.shared.backlog.frames_taken.store(frames_taken, Ordering::Relaxed);
            if t.duration_since(published) >= PUBLISH_EVERY {
                self.publish();
                published = t;
            }
            if t.duration_since(exchanges_published) >= PUBLISH_EXCHANGES_EVERY {
                self.publish_exchanges();
                exchanges_published = t;
            }
        }
        // Leave nothing half-open on the test server: reset what is still running.
        self.engine.shutdown(since_start(Instant::now()));
        announcements.release_now = true;
        self.flush(&mut announcements, Instant::now()).await;
        self.publish();
        self.publish_exchanges();
        if let Some(why) = self.tx.last_error() {
            log::warn!(
                "worker {}: {} packets could not be sent; the last because: {why}",
                self.index,
                self.tx.errors()
            );
        }
    }

    /// Hands queued reply facts to the engine (bounded, so a flood of replies cannot starve
    /// captured input); returns how many batches there were.
    fn take_facts(&mut self, now: u64) -> usize {
        let engine = &mut self.engine;
        self.facts.drain(FACTS_PER_PASS, |facts| engine.on_replies_with_payload(now, &facts))
    }

    async fn flush(&mut self, announcements: &mut Announcements, now: Instant) {
        let out = self.engine.outbox();
        if let Some((batch, claims)) = announcements.take(&mut out.events, now) {
            announcements.sent += 1;
            let token = sync_token(self.index, announcements.sent);
            // The hub sends them on when this worker next waits, after the packets: an
            // intercept that holds early replies keeps a SYN-ACK that beats its OWN.
            if self.events.send((token, batch)).await.is_ok() && claims && self.announced.confirmation_needed() {
                self.announced.wait_confirmed(announcements.sent, ANNOUNCE_WAIT).await;
            }
        }
        let out = self.engine.outbox();
        if out.packet_count() > 0 {
            self.tx.send(out.packets());
        }
        out.clear();
    }

    fn publish_exchanges(&self) {
        self.shared.exchanges.lock().expect("not poisoned").clone_from(self.engine.exchanges());
    }

    fn publish(&self) {
        *self.shared.counters.lock().expect("not poisoned") = *self.engine.counters();
        *self.shared.active.lock().expect("not poisoned") =
            (self.engine.active_sessions(), self.engine.buffered_bytes());
        *self.shared.tx_errors.lock().expect("not poisoned") = self.tx.errors();
        self.shared.cpu_us.store(xdp_runtime::thread_cpu_us(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_doorbell_rings_once_per_drain_however_many_batches_wait() {
        let (inputs_tx, mut inputs_rx) = input_queue(16);
        let (tx, rx) = facts_queue(inputs_tx, 16);
        for _ in 0..5 {
            let mut one = FactsBatch::default();
            one.push(common::facts::ReplyFacts::default(), &[]);
            tx.try_send(one).unwrap();
        }
        assert!(matches!(inputs_rx.try_recv(), Ok(Input::Wake)));
        assert!(inputs_rx.try_recv().is_err(), "one wake-up for five batches");
        let mut seen = 0;
        assert_eq!(rx.drain(3, |b| seen += b.len()), 3, "bounded");
        assert_eq!(rx.drain(16, |b| seen += b.len()), 2);
        assert_eq!(seen, 5);
        tx.try_send(FactsBatch::default()).unwrap();
        assert!(matches!(inputs_rx.try_recv(), Ok(Input::Wake)), "after a drain the next batch rings again");
    }

    #[test]
    fn a_full_input_queue_leaves_the_doorbell_unrung_not_stuck() {
        let (inputs_tx, mut inputs_rx) = input_queue(1);
        inputs_tx.try_send(Input::SourceDone).ok().unwrap();
        let (tx, rx) = facts_queue(inputs_tx, 4);
        tx.try_send(FactsBatch::default()).unwrap(); // the doorbell does not fit
        assert!(matches!(inputs_rx.try_recv(), Ok(Input::SourceDone)));
        tx.try_send(FactsBatch::default()).unwrap(); // so this one rings
        assert!(matches!(inputs_rx.try_recv(), Ok(Input::Wake)));
        assert_eq!(rx.drain(8, drop), 2);
    }

    fn ep(port: u16) -> common::endpoint::Endpoint {
        common::endpoint::Endpoint::v4([10, 0, 0, 2], port)
    }

    #[test]
    fn claims_go_at_once_and_take_the_waiting_releases_along_in_order() {
        let mut a = Announcements::default();
        assert_eq!(a.take(&mut vec![Event::Disown(ep(1))], Instant::now()), None, "a release alone waits");
        assert_eq!(a.take(&mut vec![Event::Disown(ep(2))], Instant::now()), None);
        let batch = a.take(&mut vec![Event::Own(ep(1)), Event::Disown(ep(3))], Instant::now());
        let expected = vec![Event::Disown(ep(1)), Event::Disown(ep(2)), Event::Own(ep(1)), Event::Disown(ep(3))];
        assert_eq!(batch, Some((expected, true)), "the claim is waited for");
        assert_eq!(a.take(&mut vec![], Instant::now()), None, "nothing left");
    }

    #[test]
    fn releases_wait_at_most_a_while_and_all_go_when_the_worker_stops() {
        let mut a = Announcements::default();
        let t0 = Instant::now();
        assert_eq!(a.take(&mut vec![Event::Disown(ep(1))], t0), None);
        assert_eq!(a.take(&mut vec![], t0 + RELEASE_EVERY / 2), None, "not yet");
        assert_eq!(
            a.take(&mut vec![], t0 + RELEASE_EVERY),
            Some((vec![Event::Disown(ep(1))], false)),
            "due after RELEASE_EVERY, without new events"
        );
        let t1 = t0 + RELEASE_EVERY;
        assert_eq!(a.take(&mut vec![Event::Disown(ep(2))], t1), None);
        a.release_now = true;
        assert_eq!(a.take(&mut vec![], t1), Some((vec![Event::Disown(ep(2))], false)));
    }

    #[tokio::test]
    async fn a_worker_waits_for_its_announcements_until_confirmed_or_the_timeout() {
        let announced = Arc::new(Announced::default());
        let confirm = {
            let announced = Arc::clone(&announced);
            tokio::spawn(async move {
                announced.mark_confirmed(1);
                tokio::task::yield_now().await;
                announced.mark_confirmed(2);
            })
        };
        let started = Instant::now();
        announced.wait_confirmed(2, Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5), "confirmed by a task on the same thread");
        confirm.await.unwrap();
        let started = Instant::now();
        announced.wait_confirmed(3, Duration::from_millis(30)).await;
        assert!(started.elapsed() >= Duration::from_millis(30), "never confirmed: waited out the timeout");
    }

    #[test]
    fn sync_tokens_carry_worker_and_batch() {
        assert_eq!(split_token(sync_token(3, 77)), (3, 77));
        assert_eq!(split_token(sync_token(0, 1)), (0, 1));
        assert_ne!(sync_token(1, 5), sync_token(2, 5));
    }
}
