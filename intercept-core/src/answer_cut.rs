//! Where each answer of the test server starts, so that a copier that wants payload
//! (`--payload-bytes`) gets the first bytes of every answer and no more. An answer is the
//! replies between two changes of the test server's acknowledgement: the client sent more,
//! so this is the answer to a new request.

use std::collections::HashMap;

use common::{
    endpoint::Endpoint,
    facts::ReplyFacts,
    hash::Hasher,
    seq::SeqNum,
    tcp::flags::{FIN, RST},
};

/// Answers followed at once; beyond this the record starts over (at worst one answer per
/// session is cut as if it began later), so a copier that never closes cannot grow it.
pub const MAX_FOLLOWED: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct AnswerCuts {
    /// Per client endpoint: the acknowledgement its current answer goes with, and where the
    /// answer starts in the test server's sequence space.
    answers: HashMap<Endpoint, (SeqNum, SeqNum), Hasher>,
}

impl AnswerCuts {
    /// How many of this reply's payload bytes fall within the first `limit` of its answer.
    pub fn keep(&mut self, f: &ReplyFacts, limit: u32) -> usize {
        if f.flags & RST != 0 {
            self.answers.remove(&f.client);
            return 0;
        }
        let mut keep = 0;
        if f.payload_len > 0 {
            if self.answers.len() >= MAX_FOLLOWED && !self.answers.contains_key(&f.client) {
                self.answers = HashMap::default();
            }
            let answer = self.answers.entry(f.client).or_insert((f.ack, f.seq));
            if answer.0 != f.ack {
                *answer = (f.ack, f.seq);
            }
            if let Ok(at) = u32::try_from(f.seq.since(answer.1)) {
                keep = (limit.saturating_sub(at) as usize).min(f.payload_len as usize);
            }
        }
        if f.flags & FIN != 0 {
            self.answers.remove(&f.client);
        }
        keep
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use common::tcp::flags::ACK;

    use super::*;

    fn data(seq: u32, ack: u32, len: u16, flags: u8) -> ReplyFacts {
        ReplyFacts {
            client: Endpoint::v4([10, 0, 0, 1], 40000),
            seq: SeqNum(seq),
            ack: SeqNum(ack),
            payload_len: len,
            flags: ACK | flags,
            ..ReplyFacts::default()
        }
    }

    #[test]
    fn each_answer_gets_its_first_bytes() {
        let mut cuts = AnswerCuts::default();
        // First answer (to the request ending at 100): 1000 + 1000 + 500 bytes, limit 1500.
        assert_eq!(cuts.keep(&data(1, 100, 1000, 0), 1500), 1000);
        assert_eq!(cuts.keep(&data(1001, 100, 1000, 0), 1500), 500);
        assert_eq!(cuts.keep(&data(2001, 100, 500, 0), 1500), 0);
        assert_eq!(cuts.keep(&data(1, 100, 1000, 0), 1500), 1000, "a retransmission of its start");
        // The next request (ack 180): a new answer.
        assert_eq!(cuts.keep(&data(2501, 180, 1200, 0), 1500), 1200);
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts.keep(&data(3701, 180, 10, FIN), 1500), 10);
        assert!(cuts.is_empty(), "the FIN ends it");
    }

    #[test]
    fn acknowledgements_and_resets_keep_nothing() {
        let mut cuts = AnswerCuts::default();
        assert_eq!(cuts.keep(&data(1, 100, 0, 0), 1500), 0);
        assert!(cuts.is_empty(), "a bare ACK starts no answer");
        cuts.keep(&data(1, 100, 10, 0), 1500);
        assert_eq!(cuts.keep(&data(11, 100, 0, RST), 1500), 0);
        assert!(cuts.is_empty());
    }
}
