//! Exchanges: a request and its answer, judged against production's answer to the same request.
//!
//! A request is the client bytes between two points where the client had received more of
//! production's answer; production's answer to it is what the client acknowledged in between.
//! The test server's answer is what it sent after taking the request. One record per target
//! keeps the counts and the first-byte latencies, so the copier can say whether the test server
//! answered like production, not only whether it took the bytes.

use std::collections::BTreeMap;

use common::endpoint::Endpoint;
use hdrhistogram::Histogram;

use crate::compare::{self, Answer, Difference, IgnoredHeaders, Kinds, Protocol};

/// How the test server answered one request, measured against production's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// At least as many bytes as production answered.
    Full,
    /// Some bytes, fewer than production's, then quiet (or the answer timeout).
    Short,
    /// Nothing within the answer timeout, where production answered.
    Unanswered,
    /// Production did not answer it either (the client went on or closed without an answer).
    NotAnsweredOnline,
}

/// Latencies are kept in microseconds up to an hour, to two significant figures (1 %): the
/// workers copy these records every half second, and three figures take 184 KiB a histogram
/// against 26.
const LATENCY_MAX_US: u64 = 3_600_000_000;

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid histogram bounds")
}

/// What one target answered, over every session replayed to it.
#[derive(Clone, Debug)]
pub struct TargetExchanges {
    pub target: Endpoint,
    /// Requests judged, by outcome.
    pub answered: u64,
    pub answered_short: u64,
    pub unanswered: u64,
    pub unanswered_online: u64,
    /// Requests that moved on because the answer timeout ran out (short or unanswered).
    pub answer_timeouts: u64,
    /// Sessions whose SYN the test server answered with a reset (port closed, overloaded).
    pub sessions_refused: u64,
    /// Established sessions the test server reset.
    pub sessions_reset_by_target: u64,
    /// A SYN met a connection the test server still held from an earlier run (it answered
    /// with an ACK): reset and retried.
    pub stale_connections_reset: u64,
    /// First answer byte after the request, microseconds: the test server's, and production's
    /// as the client saw it (the client's first acknowledgement of the answer).
    pub target_latency_us: Histogram<u64>,
    pub production_latency_us: Histogram<u64>,
    /// How its answers compared with production's (`--payload-bytes`).
    pub comparison: Comparison,
}

impl TargetExchanges {
    pub fn new(target: Endpoint) -> Self {
        Self {
            target,
            answered: 0,
            answered_short: 0,
            unanswered: 0,
            unanswered_online: 0,
            answer_timeouts: 0,
            sessions_refused: 0,
            sessions_reset_by_target: 0,
            stale_connections_reset: 0,
            target_latency_us: latency_histogram(),
            production_latency_us: latency_histogram(),
            comparison: Comparison::default(),
        }
    }

    /// Requests judged.
    pub fn requests(&self) -> u64 {
        self.answered + self.answered_short + self.unanswered + self.unanswered_online
    }

    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Full => self.answered += 1,
            Outcome::Short => self.answered_short += 1,
            Outcome::Unanswered => self.unanswered += 1,
            Outcome::NotAnsweredOnline => self.unanswered_online += 1,
        }
    }

    /// Adds another engine's record of the same target (the workers' records are summed).
    pub fn merge(&mut self, other: &Self) {
        self.answered += other.answered;
        self.answered_short += other.answered_short;
        self.unanswered += other.unanswered;
        self.unanswered_online += other.unanswered_online;
        self.answer_timeouts += other.answer_timeouts;
        self.sessions_refused += other.sessions_refused;
        self.sessions_reset_by_target += other.sessions_reset_by_target;
        self.stale_connections_reset += other.stale_connections_reset;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.target_latency_us.add(&other.target_latency_us);
        let _ = self.production_latency_us.add(&other.production_latency_us);
        self.comparison.merge(&other.comparison);
    }
}

/// Differing exchanges kept as examples, per target.
pub const MAX_SAMPLES: usize = 32;
/// Request groups counted apart; the rest are counted together under [`OTHER_GROUPS`].
pub const MAX_GROUPS: usize = 256;
pub const OTHER_GROUPS: &str = "(other requests)";

/// One exchange compared: how its answer differs from production's, and what people need to
/// read it (kept as a sample when it differs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// [`compare::request_group`].
    pub group: String,
    pub request: String,
    pub production: String,
    pub target: String,
    pub difference: Difference,
}

impl Judged {
    pub fn new(request: &[u8], production: Answer<'_>, target: Answer<'_>, ignored: &IgnoredHeaders) -> Self {
        let protocol = Protocol::of_request(request);
        Self {
            group: compare::request_group(protocol, request),
            request: compare::describe_request(protocol, request),
            production: compare::first_line(production.head),
            target: compare::first_line(target.head),
            difference: compare::compare(protocol, production, target, ignored),
        }
    }
}

/// A differing exchange, for people to read.
pub type Sample = Judged;

/// Exchanges compared and equal, per request group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    pub compared: u64,
    pub different: u64,
}

/// The answers of a target against production's, exchange by exchange.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    pub compared: u64,
    pub different: u64,
    /// Answered exchanges not compared: production's answer bytes were not captured (live copy
    /// mode), or the test server's did not come (an intercept without payload).
    pub not_compared: u64,
    /// Differing exchanges by kind ([`Kinds::ALL`]'s order); one exchange may count in several.
    pub by_kind: [u64; Kinds::ALL.len()],
    /// By request group ([`compare::request_group`]).
    pub groups: BTreeMap<String, GroupCounts>,
    pub samples: Vec<Sample>,
}

impl Comparison {
    pub fn equal(&self) -> u64 {
        self.compared - self.different
    }

    /// Compares one exchange and counts it.
    pub fn record(&mut self, request: &[u8], production: Answer<'_>, target: Answer<'_>, ignored: &IgnoredHeaders) {
        self.count(Judged::new(request, production, target, ignored));
    }

    /// Counts an exchange compared.
    pub fn count(&mut self, judged: Judged) {
        self.compared += 1;
        let group = self.group(judged.group.clone());
        group.compared += 1;
        if judged.difference.is_empty() {
            return;
        }
        group.different += 1;
        self.different += 1;
        for (i, (kind, _)) in Kinds::ALL.iter().enumerate() {
            self.by_kind[i] += u64::from(judged.difference.kinds.contains(*kind));
        }
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(judged);
        }
    }

    fn group(&mut self, name: String) -> &mut GroupCounts {
        let name = if self.groups.len() >= MAX_GROUPS && !self.groups.contains_key(&name) {
            OTHER_GROUPS.to_owned()
        } else {
            name
        };
        self.groups.entry(name).or_default()
    }

    pub fn merge(&mut self, other: &Self) {
        self.compared += other.compared;
        self.different += other.different;
        self.not_compared += other.not_compared;
        for (mine, theirs) in self.by_kind.iter_mut().zip(other.by_kind) {
            *mine += theirs;
        }
        for (name, counts) in &other.groups {
            let group = self.group(name.clone());
            group.compared += counts.compared;
            group.different += counts.different;
        }
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.iter().take(room).cloned());
    }
}

/// One record per target, found by a scan: there are as many targets as `-x` mappings.
#[derive(Clone, Debug, Default)]
pub struct Exchanges(Vec<TargetExchanges>);

impl Exchanges {
    pub fn of(&mut self, target: Endpoint) -> &mut TargetExchanges {
        match self.0.iter().position(|t| t.target == target) {
            Some(i) => &mut self.0[i],
            None => {
                self.0.push(TargetExchanges::new(target));
                self.0.last_mut().expect("just pushed")
            }
        }
    }

    pub fn targets(&self) -> &[TargetExchanges] {
        &self.0
    }

    /// Adds another engine's records.
    pub fn merge(&mut self, other: &Self) {
        for t in &other.0 {
            self.of(t.target).merge(t);
        }
    }

    /// Summed over targets: (answered in full, short, unanswered, not answered online).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        self.0.iter().fold((0, 0, 0, 0), |(a, b, c, d), t| {
            (a + t.answered, b + t.answered_short, c + t.unanswered, d + t.unanswered_online)
        })
    }
}
