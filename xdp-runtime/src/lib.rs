//! The userspace half every XDP program of ours needs: load the embedded object with the log
//! level the process runs at, forward aya-log records, attach without trampling a foreign
//! program, print counters, and detach on SIGINT/SIGTERM (the bpf_link covers SIGKILL).

pub mod attach;
pub mod bpf;
pub mod caps;
pub mod coalesce;
pub mod counters;
pub mod cpu;
pub mod iface;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod tx;
pub mod xdp_tx;
pub mod xsk;
pub mod xsk_rx;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use common::counters::Counter;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::counters::{stats_line, summary_line, Counters};
pub use crate::{
    attach::{attach, AttachError, Attached},
    cpu::{allowed_cores, pin_to, thread_cpu_us},
};

/// Reads `--secret-file`: the shared secret of the intercept ↔ copier protocol (trailing
/// whitespace and newline removed; an empty file is an error, not "no secret").
pub fn read_secret(path: &std::path::Path) -> anyhow::Result<std::sync::Arc<[u8]>> {
    let text = std::fs::read(path).with_context(|| format!("reading the secret file {}", path.display()))?;
    let secret = text.trim_ascii_end();
    if secret.is_empty() {
        anyhow::bail!("the secret file {} is empty", path.display());
    }
    Ok(secret.into())
}

/// clap value parser for `--stats-interval`: a positive, finite number of seconds.
pub fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Loads an eBPF object; eBPF log records below the process's log level are not even written.
pub fn load(object: &[u8]) -> anyhow::Result<Ebpf> {
    load_with(object, &[], &[])
}

/// [`load`], setting the object's globals `(name, native-endian bytes)` first, and the maps' sizes
/// `(name, max_entries)` (a ring buffer's in bytes) that differ from the object's: a map the
/// program run does not use need not take its memory.
pub fn load_with(object: &[u8], globals: &[(&str, &[u8])], sizes: &[(&str, u32)]) -> anyhow::Result<Ebpf> {
    let level = log::max_level() as u8;
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &level, false);
    for &(name, value) in globals {
        loader.override_global(name, value, true);
    }
    for &(name, entries) in sizes {
        loader.map_max_entries(name, entries);
    }
    loader.load(object).context("loading the eBPF object into the kernel")
}

/// A task that ends with its owner: aborted when this is dropped (a connection's writer or
/// flusher goes with the connection).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forwards the program's aya-log records to the `log` crate from a background task.
pub fn forward_logs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let logger = aya_log::EbpfLogger::init(ebpf).context("setting up eBPF logging")?;
    // SAFETY: the logger owns its ring-buffer fd and moves into the AsyncFd, which it outlives
    // in no case: both are dropped together.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("registering the eBPF log ring: {}", err.into_parts().1))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Why the process is stopping.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Interrupt,
    Terminate,
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn stop_signal() -> anyhow::Result<Stop> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = int.recv() => Stop::Interrupt,
        _ = term.recv() => Stop::Terminate,
    })
}

/// Prints a stats line every `interval` until SIGINT/SIGTERM, then the summary. `extra` gives
/// the userspace counters to print after the XDP program's.
pub async fn report_until_stopped<C: Counter>(
    label: &str,
    counters: &Counters<C>,
    interval: Duration,
    extra: impl Fn() -> Vec<(&'static str, u64)>,
) -> anyhow::Result<Stop> {
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut before = counters.read()?;
    let mut since = Instant::now();
    let stop = loop {
        tokio::select! {
            stop = &mut stop => break stop?,
            _ = ticker.tick() => {
                let now = counters.read()?;
                println!("{}", stats_line::<C>(label, &now, &before, since.elapsed().as_secs_f64(), &extra()));
                before = now;
                since = Instant::now();
            }
        }
    };
    println!("{}", summary_line::<C>(label, &counters.read()?, &extra()));
    Ok(stop)
}
