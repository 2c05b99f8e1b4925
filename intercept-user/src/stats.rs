//! Userspace counters of the intercept, shared by the workers and the server. Updated once per
//! batch, not per packet.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Stats {
    /// Replies the AF_XDP workers reduced to facts.
    pub replies: AtomicU64,
    /// Frames in the AF_XDP rings that did not parse as TCP (should stay 0: the XDP program
    /// only redirects TCP).
    pub unparsed: AtomicU64,
    /// Facts sent to their owning copier.
    pub routed: AtomicU64,
    /// Facts no copier owns: counted and dropped.
    pub unowned: AtomicU64,
    /// Facts dropped because their copier's bounded queue was full.
    pub slow_copier_dropped: AtomicU64,
    /// Copiers connected now.
    pub copiers: AtomicU64,
    /// Connections closed for a protocol error, a wrong version or secret.
    pub rejected: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// `name=value` pairs for the stats line.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("replies", &self.replies),
            ("unparsed", &self.unparsed),
            ("routed", &self.routed),
            ("unowned", &self.unowned),
            ("slow_copier_dropped", &self.slow_copier_dropped),
            ("copiers", &self.copiers),
            ("rejected", &self.rejected),
        ]
        .into_iter()
        .map(|(name, c)| (name, c.load(Relaxed)))
        .collect()
    }
}
