//! AF_XDP receive of replies: one socket per RX queue, one pinned worker thread per socket,
//! each batch of frames reduced to facts and routed to the copiers by the worker itself (one
//! lock and one socket write per copier and batch; no other thread is woken).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use xdp_runtime::{coalesce::Coalesce, xsk_rx::RxSocket};

use common::facts::arrival_stamp;

use crate::{replies::Batch, server::SharedRoutes, stats::Stats};

/// Poll timeout: how quickly a worker notices shutdown when no traffic arrives.
const POLL_MS: i32 = 100;

/// The intercept's default pause (`--coalesce-us`). Replies pace the copier's sessions, so each
/// may come up to a millisecond later; replay throughput did not drop for it, and each reply's
/// facts say how long it waited (the latency figures leave it out).
pub const DEFAULT_COALESCE_US: u32 = 1000;

/// Starts the worker for `socket` on `core`. It runs until `stop` is set.
pub fn spawn_worker(
    mut socket: RxSocket,
    core: usize,
    coalesce: Coalesce,
    routes: SharedRoutes,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("xsk-rx-{}", socket.queue))
        .spawn(move || {
            xdp_runtime::pin_to(core);
            let mut batch = Batch::default();
            while !stop.load(Ordering::Relaxed) {
                batch.start(&stats);
                let frames = match socket.receive(POLL_MS, |frame| batch.push(frame, arrival_stamp(frame))) {
                    Ok(n) => n,
                    Err(err) => {
                        log::error!("AF_XDP queue {}: poll failed: {err}", socket.queue);
                        break;
                    }
                };
                batch.route(&routes, &stats);
                if let Some(pause) = coalesce.pause_after(frames) {
                    std::thread::sleep(pause);
                }
            }
        })
        .context("starting an AF_XDP worker thread")
}
