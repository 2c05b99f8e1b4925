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
    /// SYN-ACKs that came before the OWN of their client, held for it (on an assistant host;
    /// those no OWN comes for in time are counted unowned when dropped).
    pub held_early: AtomicU64,
    /// Facts dropped because their copier's bounded queue was full.
    pub slow_copier_dropped: AtomicU64,
    /// Copiers connected now.
    pub copiers: AtomicU64,
    /// Connections closed for a protocol error, a wrong version or secret, a refused claim.
    pub rejected: AtomicU64,
    /// Connections open now, handshakes included (bounded by `--max-copiers`).
    pub connections: AtomicU64,
    /// Connections refused at once: too many, or from outside `--allow`.
    pub refused: AtomicU64,
    /// Connections closed for sending nothing for `--idle-timeout`.
    pub idle_closed: AtomicU64,
    /// Announcements refused: an endpoint another copier owns, or past a limit.
    pub claims_refused: AtomicU64,
    /// Reply payload bytes sent to copiers that want them (`--payload-bytes`), and those left
    /// out: past the first bytes of their answer.
    pub payload_sent: AtomicU64,
    pub payload_cut: AtomicU64,
    /// The most payload bytes per answer any connected copier wants: what the workers copy.
    pub payload_wanted: AtomicU64,
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
            ("held_early", &self.held_early),
            ("slow_copier_dropped", &self.slow_copier_dropped),
            ("copiers", &self.copiers),
            ("rejected", &self.rejected),
            ("connections", &self.connections),
            ("refused", &self.refused),
            ("idle_closed", &self.idle_closed),
            ("claims_refused", &self.claims_refused),
            ("payload_sent", &self.payload_sent),
            ("payload_cut", &self.payload_cut),
        ]
        .into_iter()
        .map(|(name, c)| (name, c.load(Relaxed)))
        .collect()
    }
}
