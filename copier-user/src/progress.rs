//! A capture file's replay on a terminal: one live line with the share of the file read,
//! sessions open and done, requests a second, elapsed time and the time left (indicatif).
//! Elsewhere (a pipe, a log file) the periodic stats lines say the same.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    read: Arc<AtomicU64>,
    /// Requests sent at the last update, and when, for the rate.
    last: (u64, Instant),
}

impl Progress {
    /// A line for a file of `bytes`, whose reader counts into `read`.
    pub fn start(read: Arc<AtomicU64>, bytes: u64) -> Self {
        let bar = ProgressBar::new(bytes.max(1));
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {percent:>3}% of the file, {eta} left | {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar, read, last: (0, Instant::now()) }
    }

    /// Brings the line up to date from the stats line's pairs.
    pub fn update(&mut self, pairs: &[(&'static str, u64)]) {
        let get = |name: &str| pairs.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
        self.bar.set_position(self.read.load(Ordering::Relaxed));
        let (requests, at) = self.last;
        let seconds = at.elapsed().as_secs_f64();
        if seconds >= 1.0 {
            let rate = get("requests").saturating_sub(requests) as f64 / seconds;
            self.bar.set_message(format!(
                "sessions {} open, {} done | {rate:.0} requests/s | answered {}",
                get("active"),
                get("completed"),
                get("answered")
            ));
            self.last = (get("requests"), Instant::now());
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
