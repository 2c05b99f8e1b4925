//! Interrupt moderation for a reader of a ring the kernel fills (AF_XDP RX, a BPF ring
//! buffer): after a pass that took a partial batch, the reader pauses before it looks again,
//! so that the next pass takes more.
//!
//! On this machine kind a thread's wake-up costs tens of microseconds of accounted CPU, more
//! than the frames or replies it carries when they come one or two at a time, and every pass
//! also wakes whoever the reader hands its batch to (docs/bench.md, "Design choices").

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    pause: Duration,
    /// A pass that took this many took all it could: more are waiting.
    full: usize,
}

impl Coalesce {
    /// `us` = 0 turns it off.
    pub fn from_micros(us: u32, full_batch: usize) -> Self {
        Self { pause: Duration::from_micros(us.into()), full: full_batch }
    }

    /// The pause after a pass that took `taken`: none after a full batch (more are waiting) or
    /// an empty one (the reader's own wait for the first frame follows; the first frame after
    /// a quiet spell never waits for company).
    pub fn pause_after(self, taken: usize) -> Option<Duration> {
        (taken > 0 && taken < self.full && !self.pause.is_zero()).then_some(self.pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_partial_batch_is_followed_by_a_pause() {
        let c = Coalesce::from_micros(250, 64);
        assert_eq!(c.pause_after(1), Some(Duration::from_micros(250)));
        assert_eq!(c.pause_after(63), Some(Duration::from_micros(250)));
        assert_eq!(c.pause_after(64), None, "a full batch: more are waiting");
        assert_eq!(c.pause_after(0), None, "nothing came: the reader waits its own way");
        assert_eq!(Coalesce::from_micros(0, 64).pause_after(1), None, "0 turns it off");
    }
}
