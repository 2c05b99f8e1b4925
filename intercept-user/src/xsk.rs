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

/// The intercept's default pause (`--coalesce-us`): replies pace the copier's sessions, so
/// it stays short.
pub const DEFAULT_COALESCE_US: u32 = 500;

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
