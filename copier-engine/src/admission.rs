//! Load control: which new sessions start. `-r` replays a share of the flows (chosen by flow
//! hash, so a session is all or nothing), `--ramp` raises that share from 1 % over a while, and
//! `--max-rate` caps the sessions started per second, as a token bucket with a second's burst.

/// The admission of one engine.
#[derive(Clone, Debug)]
pub struct Admission {
    percent: u8,
    ramp_us: u64,
    /// The first session's arrival: the ramp starts there.
    started_at: Option<u64>,
    rate: Option<Bucket>,
}

#[derive(Clone, Debug)]
struct Bucket {
    per_s: f64,
    tokens: f64,
    at: u64,
}

impl Admission {
    /// `percent` of the flows (1..=100), reached after `ramp_us`; at most `max_per_s` new
    /// sessions a second, if given.
    pub fn new(percent: u8, ramp_us: u64, max_per_s: Option<f64>) -> Self {
        let rate = max_per_s.filter(|r| *r > 0.0).map(|per_s| Bucket { per_s, tokens: per_s.max(1.0), at: 0 });
        Self { percent: percent.clamp(1, 100), ramp_us, started_at: None, rate }
    }

    /// The share of flows replayed at `now`.
    pub fn percent(&mut self, now: u64) -> u8 {
        let since = now.saturating_sub(*self.started_at.get_or_insert(now));
        if since >= self.ramp_us {
            return self.percent;
        }
        let step = u64::from(self.percent - 1) * since / self.ramp_us;
        1 + step as u8
    }

    /// A new share of the flows (1..=100), from now on; a ramp in progress rises to it.
    pub fn set_percent(&mut self, percent: u8) {
        self.percent = percent.clamp(1, 100);
    }

    /// Whether one more session may start at `now` under the rate cap (it takes a token).
    pub fn take(&mut self, now: u64) -> bool {
        let Some(b) = &mut self.rate else { return true };
        let elapsed = now.saturating_sub(b.at) as f64 / 1e6;
        b.tokens = (b.tokens + elapsed * b.per_s).min(b.per_s.max(1.0));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_raises_the_share_from_one_percent_to_the_target() {
        let mut a = Admission::new(50, 10_000_000, None);
        assert_eq!(a.percent(5_000_000), 1, "the first arrival starts the ramp");
        assert_eq!(a.percent(10_000_000), 25);
        assert_eq!(a.percent(15_000_000), 50);
        assert_eq!(a.percent(99_000_000), 50);
        assert_eq!(Admission::new(100, 0, None).percent(7), 100, "no ramp");
    }

    #[test]
    fn the_rate_cap_admits_a_seconds_burst_then_the_rate() {
        let mut a = Admission::new(100, 0, Some(10.0));
        let burst = (0..20).filter(|_| a.take(1_000_000)).count();
        assert_eq!(burst, 10, "a second's worth at once");
        let later = (0..100).filter(|i| a.take(1_000_000 + i * 50_000)).count();
        assert_eq!(later, 49, "then ten a second over the next five seconds");
        assert!(Admission::new(100, 0, None).take(0));
    }
}
