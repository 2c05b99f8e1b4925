//! AF_XDP receive of replies: one socket per RX queue, one pinned worker thread per socket,
//! each batch of frames reduced to facts and sent to the router in one message.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use common::facts::ReplyFacts;
use tokio::sync::mpsc;
use xdp_runtime::xsk_rx::{RxSocket, BATCH};

use crate::stats::Stats;

/// Poll timeout: how quickly a worker notices shutdown when no traffic arrives.
const POLL_MS: i32 = 100;

/// Interrupt moderation for a worker: after a batch that did not fill, it pauses before looking
/// again, so that the next batch is larger. Every wake-up of the worker, the router and the
/// copier's reader costs more than the replies it carries when they come one or two at a time
/// (in the bench, 250 µs took the intercept's CPU per short session from 25–35 µs to 14–18;
/// measured again later, 500 µs gave 10–11 where 250 gave 14–18, and 1 ms little more). The
/// first reply after a quiet spell never waits: the poll returns at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce(Duration);

impl Coalesce {
    pub const DEFAULT_US: u32 = 500;

    pub fn from_micros(us: u32) -> Self {
        Self(Duration::from_micros(us.into()))
    }

    /// The pause after receiving `received` frames: none after a full batch (more are waiting)
    /// or an empty one (the poll already waited).
    pub fn pause_after(self, received: usize) -> Option<Duration> {
        (received > 0 && received < BATCH && !self.0.is_zero()).then_some(self.0)
    }
}

/// Starts the worker for `socket` on `core`. It runs until `stop` is set.
pub fn spawn_worker(
    mut socket: RxSocket,
    core: usize,
    coalesce: Coalesce,
    to_router: mpsc::Sender<Vec<ReplyFacts>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("xsk-rx-{}", socket.queue))
        .spawn(move || {
            xdp_runtime::pin_to(core);
            while !stop.load(Ordering::Relaxed) {
                // Allocated once per batch that has replies (it travels to the router).
                let mut facts = Vec::new();
                let mut unparsed = 0;
                let frames = socket.receive(POLL_MS, |frame| match ReplyFacts::from_frame(frame) {
                    Ok(Some(f)) => {
                        if facts.capacity() == 0 {
                            facts.reserve_exact(BATCH);
                        }
                        facts.push(f)
                    }
                    _ => unparsed += 1,
                });
                let frames = match frames {
                    Ok(n) => n,
                    Err(err) => {
                        log::error!("AF_XDP queue {}: poll failed: {err}", socket.queue);
                        break;
                    }
                };
                Stats::add(&stats.replies, facts.len() as u64);
                Stats::add(&stats.unparsed, unparsed);
                let n = facts.len() as u64;
                if !facts.is_empty() && to_router.try_send(facts).is_err() {
                    Stats::add(&stats.backlog_dropped, n);
                }
                if let Some(pause) = coalesce.pause_after(frames) {
                    std::thread::sleep(pause);
                }
            }
        })
        .context("starting an AF_XDP worker thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_partial_batch_is_followed_by_a_pause() {
        let c = Coalesce::from_micros(250);
        assert_eq!(c.pause_after(1), Some(Duration::from_micros(250)));
        assert_eq!(c.pause_after(BATCH - 1), Some(Duration::from_micros(250)));
        assert_eq!(c.pause_after(BATCH), None, "a full batch: more are waiting");
        assert_eq!(c.pause_after(0), None, "nothing came: the poll itself waited");
        assert_eq!(Coalesce::from_micros(0).pause_after(1), None, "0 turns it off");
    }
}
