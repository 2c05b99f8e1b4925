//! AF_XDP receive of replies: one socket per RX queue, one pinned worker thread per socket,
//! each batch of frames reduced to facts and sent to the router in one message.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use common::facts::ReplyFacts;
use tokio::sync::mpsc;
use xdp_runtime::{
    coalesce::Coalesce,
    xsk_rx::{RxSocket, BATCH},
};

use crate::stats::Stats;

/// Poll timeout: how quickly a worker notices shutdown when no traffic arrives.
const POLL_MS: i32 = 100;

/// The intercept's default pause (`--coalesce-us`). Replies pace the copier's sessions, so
/// each may now come up to a millisecond later; in the bench, 1 ms against 500 µs took the
/// intercept's CPU per short session from 9.5–9.8 µs to 7.2–7.8 and per keep-alive session
/// from 32–36 to 26–30, and replay throughput did not drop.
pub const DEFAULT_COALESCE_US: u32 = 1000;

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
