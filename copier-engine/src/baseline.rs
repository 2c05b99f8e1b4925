//! `--baseline`: a difference that production and the baseline (another run of the stable
//! build) already show is noise, not the candidate's (Diffy's idea). Timestamps, ids and
//! session cookies cancel out so, with no list of what to ignore. The baseline's and the
//! candidates' copies of one captured exchange are judged at different times; what came first
//! waits here for the others.

use std::collections::HashMap;

use common::{endpoint::Endpoint, hash::Hasher};

use crate::{
    compare::Difference,
    exchange::{Exchanges, Judged},
};

/// The same captured exchange in every target's copy: the captured flow (client, online
/// endpoint), which copy of it apart from the target (`-n`, `--loop`), and where the request
/// starts in the client's stream.
pub type ExchangeKey = (Endpoint, Endpoint, u16, u32);

/// Exchanges waiting for their other side, at most; beyond, the candidates' are counted as
/// they are (without the baseline's noise taken out).
const MAX_WAITING: usize = 1 << 16;

#[derive(Debug, Default)]
struct Waiting {
    /// The baseline's difference from production, once judged (`Some(None)`: it judged no
    /// answer to compare, so there is no noise to take out).
    noise: Option<Option<Difference>>,
    /// Candidates judged before the baseline: target and what they differ in.
    candidates: Vec<(Endpoint, Judged)>,
    /// Candidates counted so far.
    done: usize,
}

#[derive(Debug, Default)]
pub struct Pairing {
    waiting: HashMap<ExchangeKey, Waiting, Hasher>,
}

fn count(exchanges: &mut Exchanges, target: Endpoint, mut judged: Judged, noise: Option<&Difference>) {
    if let Some(noise) = noise {
        judged.difference = judged.difference.beyond(noise);
    }
    exchanges.of(target).comparison.count(judged);
}

impl Pairing {
    /// The baseline judged this exchange: `noise` is how it differs from production (`None`:
    /// not compared). Candidates that waited are counted; `candidates` is how many there are.
    pub fn baseline(
        &mut self,
        exchanges: &mut Exchanges,
        key: ExchangeKey,
        noise: Option<Difference>,
        candidates: usize,
    ) {
        let mut w = self.waiting.remove(&key).unwrap_or_default();
        for (target, judged) in w.candidates.drain(..) {
            count(exchanges, target, judged, noise.as_ref());
            w.done += 1;
        }
        if w.done < candidates {
            w.noise = Some(noise);
            self.insert(exchanges, key, w);
        }
    }

    /// Candidate `target` judged this exchange: counted at once if the baseline's noise is
    /// known, else when it is.
    pub fn candidate(
        &mut self,
        exchanges: &mut Exchanges,
        key: ExchangeKey,
        target: Endpoint,
        judged: Judged,
        candidates: usize,
    ) {
        let mut w = self.waiting.remove(&key).unwrap_or_default();
        match &w.noise {
            Some(noise) => {
                count(exchanges, target, judged, noise.as_ref());
                w.done += 1;
                if w.done < candidates {
                    self.insert(exchanges, key, w);
                }
            }
            None => {
                w.candidates.push((target, judged));
                self.insert(exchanges, key, w);
            }
        }
    }

    fn insert(&mut self, exchanges: &mut Exchanges, key: ExchangeKey, w: Waiting) {
        if self.waiting.len() >= MAX_WAITING {
            self.flush(exchanges);
        }
        self.waiting.insert(key, w);
    }

    /// Counts every candidate still waiting as it is (its baseline copy never came: ended, or
    /// shed), and forgets the baseline's noise waiting for candidates.
    pub fn flush(&mut self, exchanges: &mut Exchanges) {
        for (_, w) in self.waiting.drain() {
            for (target, judged) in w.candidates {
                count(exchanges, target, judged, None);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Kinds;

    fn judged(kinds: Kinds, headers: &[&str]) -> Judged {
        Judged {
            group: "GET /".into(),
            request: "GET / HTTP/1.1".into(),
            production: String::new(),
            target: String::new(),
            difference: Difference { kinds, headers: headers.iter().map(|h| h.to_string()).collect() },
        }
    }

    const CANDIDATE: Endpoint = Endpoint::v4([10, 0, 0, 1], 8081);
    const KEY: ExchangeKey = (Endpoint::v4([10, 1, 0, 1], 40000), Endpoint::v4([10, 2, 0, 1], 80), 0, 0);

    fn noise() -> Difference {
        Difference { kinds: Kinds::HEADERS, headers: vec!["date".into()] }
    }

    #[test]
    fn a_candidate_after_the_baseline_loses_the_noise() {
        let (mut p, mut e) = (Pairing::default(), Exchanges::default());
        p.baseline(&mut e, KEY, Some(noise()), 1);
        p.candidate(&mut e, KEY, CANDIDATE, judged(Kinds::HEADERS, &["date"]), 1);
        let c = &e.of(CANDIDATE).comparison;
        assert_eq!((c.compared, c.different), (1, 0));
        assert!(p.is_empty(), "both sides came");
    }

    #[test]
    fn a_candidate_before_the_baseline_waits_for_it() {
        let (mut p, mut e) = (Pairing::default(), Exchanges::default());
        p.candidate(&mut e, KEY, CANDIDATE, judged(Kinds::HEADERS | Kinds::STATUS, &["date"]), 1);
        assert_eq!(e.of(CANDIDATE).comparison.compared, 0, "waits");
        p.baseline(&mut e, KEY, Some(noise()), 1);
        let c = &e.of(CANDIDATE).comparison;
        assert_eq!((c.compared, c.different, c.samples[0].difference.kinds), (1, 1, Kinds::STATUS));
        assert!(p.is_empty());
    }

    #[test]
    fn without_a_baseline_answer_the_candidate_counts_as_it_is() {
        let (mut p, mut e) = (Pairing::default(), Exchanges::default());
        p.candidate(&mut e, KEY, CANDIDATE, judged(Kinds::HEADERS, &["date"]), 1);
        p.flush(&mut e);
        assert_eq!(e.of(CANDIDATE).comparison.different, 1);
        p.baseline(&mut e, KEY, None, 1);
        p.candidate(&mut e, KEY, CANDIDATE, judged(Kinds::HEADERS, &["date"]), 1);
        assert_eq!(e.of(CANDIDATE).comparison.different, 2);
    }
}
