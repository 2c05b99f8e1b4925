//! A batch of replies reduced to facts (and their first payload bytes while some copier wants
//! them), routed to the copiers at once: what every reply reader does with what it took.

use std::sync::atomic::Ordering;

use common::facts::{stamp_age_us, ReplyFacts};

use crate::{
    server::{Payloads, Routes, SharedRoutes},
    stats::Stats,
};

#[derive(Default)]
pub struct Batch {
    facts: Vec<ReplyFacts>,
    /// When each reply arrived: CLOCK_MONOTONIC microseconds, 32 bits (see
    /// [`common::facts::ARRIVAL_STAMP`]); `None` where unknown.
    arrived: Vec<Option<u32>>,
    payload: Payloads,
    unparsed: u64,
    /// Payload bytes to keep per reply: the most any copier wants.
    wanted: usize,
}

impl Batch {
    /// Starts a batch (buffers reused), reading what the copiers want now.
    pub fn start(&mut self, stats: &Stats) {
        self.facts.clear();
        self.arrived.clear();
        self.payload.clear();
        self.unparsed = 0;
        // Payload is copied only while some copier wants it.
        self.wanted = stats.payload_wanted.load(Ordering::Relaxed) as usize;
    }

    /// Adds a frame and its arrival stamp, if it has one: its facts, or a count if it is not a
    /// TCP segment. A frame may hold less than its IP header says (a truncated copy of a GSO
    /// packet): its payload is what it holds.
    pub fn push(&mut self, frame: &[u8], arrived: Option<u32>) {
        match ReplyFacts::with_payload(frame) {
            Ok(Some((facts, range))) => {
                self.facts.push(facts);
                self.arrived.push(arrived);
                if self.wanted > 0 {
                    let end = range.end.min(range.start + self.wanted).min(frame.len());
                    self.payload.push(frame.get(range.start..end).unwrap_or_default());
                }
            }
            _ => self.unparsed += 1,
        }
    }

    /// Counts the batch and sends its facts to their copiers, each saying how long it waited
    /// here (the reader's pauses).
    pub fn route(&mut self, routes: &SharedRoutes, stats: &Stats) {
        if self.arrived.iter().any(Option::is_some) {
            let now = xdp_runtime::cpu::monotonic_us();
            for (f, at) in self.facts.iter_mut().zip(&self.arrived) {
                f.age_us = at.map_or(0, |at| stamp_age_us(at, now));
            }
        }
        Stats::add(&stats.replies, self.facts.len() as u64);
        Stats::add(&stats.unparsed, self.unparsed);
        if !self.facts.is_empty() {
            Routes::lock(routes).route(&self.facts, &self.payload, stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP segment claiming `claimed` payload bytes, of which the frame holds `held`.
    fn segment(claimed: usize, held: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = (40 + claimed) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 100, 2, 2, 10, 100, 1, 2]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x1f, 0x90, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend((0..held).map(|i| i as u8));
        f
    }

    #[test]
    fn a_truncated_copy_keeps_its_facts_and_the_payload_it_holds() {
        let stats = Stats::default();
        stats.payload_wanted.store(100, Ordering::Relaxed);
        let mut batch = Batch::default();
        batch.start(&stats);
        batch.push(&segment(3000, 40), None);
        batch.push(&segment(10, 10), None);
        batch.push(&segment(3000, 0)[..30], None);
        assert_eq!(batch.facts.iter().map(|f| f.payload_len).collect::<Vec<_>>(), [3000, 10]);
        assert_eq!((batch.payload.get(0).len(), batch.payload.get(1).len()), (40, 10));
        assert_eq!(batch.unparsed, 1, "cut inside its headers");
    }
}
