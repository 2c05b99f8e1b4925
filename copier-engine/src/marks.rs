//! A session's request boundaries in its client stream, and the one its pacing waits at.
//!
//! Every transmit reads the current boundary, so it is kept beside the list in the session
//! record: read from the list's own storage it was a cache miss (86 % of `gate_open`'s
//! samples, 5–7 % of the worker's, with keep-alive sessions at full speed).

use smallvec::SmallVec;

/// A request boundary: the client sent the bytes from `start` on after receiving `response`
/// bytes of the online server's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub start: u32,
    pub response: u32,
}

/// The boundaries in stream order, and which of them is current (the next request, FIN or
/// RST, that waits for the answer before it).
#[derive(Debug, Default)]
pub struct Marks {
    /// The first few inline: a session of a request or two allocates nothing for them.
    all: SmallVec<[Mark; 4]>,
    current: usize,
    /// `all[current]`, kept in step by every change of either.
    at: Option<Mark>,
    /// `all[current - 1].response`, or 0 for the first request.
    before: u32,
    /// Where the current request starts: `all[current - 1].start`, or 0.
    begin: u32,
}

impl Marks {
    /// The boundary the current request ends at, if any.
    pub fn current(&self) -> Option<Mark> {
        self.at
    }

    /// Which request is current (0: the first).
    pub fn index(&self) -> usize {
        self.current
    }

    /// How many boundaries there are.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Production's answer so far when the current request started.
    pub fn previous_response(&self) -> u32 {
        self.before
    }

    /// Where request `i` starts: 0 for the first, else at the boundary before it.
    pub fn start_of(&self, i: usize) -> u32 {
        i.checked_sub(1).map_or(0, |p| self.all[p].start)
    }

    /// Production's answer before request `i`, and (if a boundary ends the request) after it.
    pub fn answer_of(&self, i: usize) -> (u32, Option<u32>) {
        let before = i.checked_sub(1).map_or(0, |p| self.all[p].response);
        (before, self.all.get(i).map(|m| m.response))
    }

    /// The boundary that starts at `offset`, if one does.
    pub fn starting_at(&self, offset: u32) -> Option<Mark> {
        let pos = self.all.partition_point(|m| m.start < offset);
        self.all.get(pos).filter(|m| m.start == offset).copied()
    }

    /// Starts loading the current boundary and those after it, where they are kept outside
    /// the session record (past the first few).
    pub fn prefetch(&self) {
        if self.all.spilled() {
            common::prefetch::lines(self.all.as_ptr().wrapping_add(self.current), size_of::<Mark>());
        }
    }

    /// Moves on to the next request, past the current boundary.
    pub fn advance(&mut self) {
        debug_assert!(self.at.is_some(), "no boundary ends the current request");
        self.current += 1;
        self.sync();
    }

    /// Records a boundary at `start` if the client had received more response than at the one
    /// before it; one inside what was already sent is too late to pace and is left out.
    pub fn add(&mut self, start: u32, response: u32) {
        let pos = self.all.partition_point(|m| m.start <= start);
        let previous = pos.checked_sub(1).map(|p| self.all[p]);
        if response <= previous.map_or(0, |m| m.response) || previous.is_some_and(|m| m.start == start) {
            return;
        }
        if pos < self.current {
            return;
        }
        self.all.insert(pos, Mark { start, response });
        self.sync();
    }

    /// How many requests begin in the stream bytes `start..end`: the first at offset 0, the
    /// others at the boundaries.
    pub fn requests_starting_in(&self, start: u32, end: u32) -> u64 {
        // Within the current request (every paced segment is): only its own start can be in
        // range, as the boundaries before it start at or before it and the rest after `end`.
        if start >= self.begin && self.at.is_none_or(|m| end <= m.start) {
            return match self.current {
                0 => u64::from(start == 0 && self.at.is_none_or(|m| m.start != 0)),
                _ => u64::from(start == self.begin),
            };
        }
        self.count_starting_in(start, end)
    }

    fn count_starting_in(&self, start: u32, end: u32) -> u64 {
        let first = self.all.partition_point(|m| m.start < start);
        let at_marks = self.all[first..].iter().take_while(|m| m.start < end).count() as u64;
        let at_zero = start == 0 && self.all.first().is_none_or(|m| m.start != 0);
        at_marks + at_zero as u64
    }

    fn sync(&mut self) {
        self.at = self.all.get(self.current).copied();
        self.before = self.answer_of(self.current).0;
        self.begin = self.start_of(self.current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(start: u32, response: u32) -> Option<Mark> {
        Some(Mark { start, response })
    }

    #[test]
    fn the_current_boundary_follows_additions_and_advances() {
        let mut m = Marks::default();
        assert_eq!((m.current(), m.previous_response()), (None, 0));
        m.add(100, 50);
        assert_eq!(m.current(), mark(100, 50));
        m.add(300, 120);
        m.add(200, 80); // out of order, before the last: still in stream order
        assert_eq!(m.current(), mark(100, 50));
        m.advance();
        assert_eq!((m.current(), m.previous_response(), m.index()), (mark(200, 80), 50, 1));
        m.advance();
        m.advance();
        assert_eq!((m.current(), m.previous_response()), (None, 120), "past the last boundary");
        m.add(400, 200);
        assert_eq!((m.current(), m.previous_response()), (mark(400, 200), 120), "a new one becomes current");
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn boundaries_without_more_answer_or_already_sent_are_left_out() {
        let mut m = Marks::default();
        m.add(100, 0);
        assert_eq!(m.len(), 0, "no answer before it: not a new request");
        m.add(100, 50);
        m.add(100, 60);
        assert_eq!(m.len(), 1, "one boundary per offset");
        m.add(200, 50);
        assert_eq!(m.len(), 1, "no more answer than before");
        m.advance();
        m.add(50, 10);
        assert_eq!(m.len(), 1, "before the current request: too late");
        assert_eq!(m.current(), None);
    }

    #[test]
    fn requests_are_found_by_offset_and_range() {
        let mut m = Marks::default();
        for (s, r) in [(10, 5), (20, 9), (30, 12), (40, 15), (50, 20), (60, 30)] {
            m.add(s, r); // more than the inline four
        }
        assert_eq!(m.starting_at(30), mark(30, 12));
        assert_eq!(m.starting_at(31), None);
        assert_eq!((m.start_of(0), m.start_of(3)), (0, 30), "request 3 starts at the third boundary");
        assert_eq!(m.answer_of(0), (0, Some(5)));
        assert_eq!(m.answer_of(6), (30, None));
        assert_eq!(m.requests_starting_in(0, 35), 4, "offset 0 and the boundaries at 10, 20, 30");
        assert_eq!(m.requests_starting_in(15, 60), 4);
    }

    proptest::proptest! {
        #[test]
        fn the_count_within_the_current_request_matches_a_full_search(
            added in proptest::collection::vec((0u32..64, 0u32..64), 0..10),
            advances in 0usize..12,
            start in 0u32..70,
            len in 1u32..20,
        ) {
            let mut m = Marks::default();
            for (s, r) in added {
                m.add(s, r);
            }
            for _ in 0..advances {
                if m.current().is_some() {
                    m.advance();
                }
            }
            let end = start + len;
            proptest::prop_assert_eq!(m.requests_starting_in(start, end), m.count_starting_in(start, end));
        }
    }
}
