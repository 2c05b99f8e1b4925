//! Retransmission timeout (RFC 6298), in microseconds.

pub const INITIAL_US: u64 = 1_000_000;
/// Linux's floor, not RFC 6298's 1 s: replays target LAN test servers.
pub const MIN_US: u64 = 200_000;
pub const MAX_US: u64 = 60_000_000;

#[derive(Clone, Copy, Debug)]
pub struct Rto {
    srtt: Option<u64>,
    rttvar: u64,
    base: u64,
    backoff: u32,
}

impl Default for Rto {
    fn default() -> Self {
        Self { srtt: None, rttvar: 0, base: INITIAL_US, backoff: 0 }
    }
}

impl Rto {
    /// Takes an RTT measurement (never of a retransmitted segment: Karn's rule is the caller's).
    pub fn sample(&mut self, rtt: u64) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                self.rttvar = (3 * self.rttvar + srtt.abs_diff(rtt)) / 4;
                self.srtt = Some((7 * srtt + rtt) / 8);
            }
        }
        self.base = (self.srtt.unwrap_or(rtt) + (4 * self.rttvar).max(1_000)).clamp(MIN_US, MAX_US);
        self.backoff = 0;
    }

    /// The timeout now, with exponential backoff applied.
    pub fn current(&self) -> u64 {
        self.base.saturating_mul(1 << self.backoff.min(16)).min(MAX_US)
    }

    pub fn back_off(&mut self) {
        self.backoff += 1;
    }

    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_one_second_and_backs_off_exponentially_to_the_cap() {
        let mut r = Rto::default();
        assert_eq!(r.current(), INITIAL_US);
        r.back_off();
        r.back_off();
        assert_eq!(r.current(), 4 * INITIAL_US);
        for _ in 0..20 {
            r.back_off();
        }
        assert_eq!(r.current(), MAX_US);
    }

    #[test]
    fn follows_measured_rtt_with_a_floor() {
        let mut r = Rto::default();
        r.sample(100);
        assert_eq!(r.current(), MIN_US, "a LAN RTT is floored");
        let mut slow = Rto::default();
        for _ in 0..10 {
            slow.sample(500_000);
        }
        assert!((500_000..800_000).contains(&slow.current()), "{}", slow.current());
    }
}
