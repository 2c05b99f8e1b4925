//! SYN-ACKs that arrive before the OWN that claims their client.
//!
//! A copier sends a new session's SYN in the same pass as its OWN: waiting for SYNCED first cost
//! it and this intercept a wake-up per session (docs/bench.md, "Design choices"). The test
//! server's SYN-ACK may then beat the OWN here; on an assistant host every reply is stolen, so
//! it is held for [`HOLD`] and goes to the copier whose OWN comes in that time. Only a session's
//! opening is held: a stray reply of a released session must not reach the next session that
//! takes its port.

use std::{collections::HashMap, collections::VecDeque, time::Duration};

use common::{endpoint::Endpoint, facts::ReplyFacts, hash::Hasher, tcp::flags};

/// How long a SYN-ACK waits for its OWN: an OWN leaves the copier with the SYN, so it trails the
/// SYN-ACK by a scheduling delay, not by the copier's SYN retransmission time (a second).
pub const HOLD: Duration = Duration::from_millis(100);

/// Replies held at most: a few milliseconds of openings at hundreds of thousands of sessions a
/// second. Past it they are dropped as unowned (the copier's SYN retransmission recovers them).
pub const MAX_HELD: usize = 16 * 1024;

/// A client's held replies, each with when it was held.
type Held = Vec<(Duration, ReplyFacts)>;

/// The held SYN-ACKs, by client endpoint, with when each client's first was held.
#[derive(Default)]
pub struct EarlyReplies {
    by_client: HashMap<Endpoint, (Duration, Held), Hasher>,
    /// Clients in the order their first reply was held, for expiry.
    order: VecDeque<(Duration, Endpoint)>,
    held: usize,
}

impl EarlyReplies {
    /// Whether `reply` opens a session: a SYN-ACK without payload.
    pub fn opens_session(reply: &ReplyFacts) -> bool {
        reply.flags & (flags::SYN | flags::ACK | flags::RST | flags::FIN) == flags::SYN | flags::ACK
            && reply.payload_len == 0
    }

    /// Holds `reply`, which nobody owns, received at `now` (any monotonic clock); false if it
    /// does not open a session or [`MAX_HELD`] are held.
    pub fn hold(&mut self, reply: &ReplyFacts, now: Duration) -> bool {
        self.expire(now);
        if !Self::opens_session(reply) || self.held >= MAX_HELD {
            return false;
        }
        let (_, replies) = self.by_client.entry(reply.client).or_insert_with(|| {
            self.order.push_back((now, reply.client));
            (now, Vec::new())
        });
        replies.push((now, *reply));
        self.held += 1;
        true
    }

    /// Moves the replies held for `client` (port 0: for every port of its address) into `into`,
    /// oldest first, at `now`: each one's `age_us` grows by the time it was held.
    pub fn take(&mut self, client: &Endpoint, now: Duration, into: &mut Vec<ReplyFacts>) {
        if self.held == 0 {
            return;
        }
        if client.port != 0 {
            if let Some((_, replies)) = self.by_client.remove(client) {
                self.held -= replies.len();
                into.extend(replies.into_iter().map(|(held_at, mut r)| {
                    let held_us = u32::try_from(now.saturating_sub(held_at).as_micros()).unwrap_or(u32::MAX);
                    r.age_us = r.age_us.saturating_add(held_us);
                    r
                }));
            }
            return;
        }
        let mut ports: Vec<Endpoint> = self.by_client.keys().filter(|c| c.addr == client.addr).copied().collect();
        ports.sort_by_key(|c| self.by_client[c].0);
        for port in ports {
            self.take(&port, now, into);
        }
    }

    /// Drops what was held longer than [`HOLD`] before `now`; returns how many replies.
    pub fn expire(&mut self, now: Duration) -> usize {
        let mut dropped = 0;
        while let Some(&(at, client)) = self.order.front() {
            if now.saturating_sub(at) < HOLD {
                break;
            }
            self.order.pop_front();
            // The client's replies may have been taken since, and held again later.
            if self.by_client.get(&client).is_some_and(|(since, _)| *since == at) {
                let (_, replies) = self.by_client.remove(&client).expect("just found");
                self.held -= replies.len();
                dropped += replies.len();
            }
        }
        if self.by_client.is_empty() {
            // Taken entries leave their place in the order behind.
            self.order.clear();
        }
        dropped
    }

    /// Replies held now.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8, port: u16) -> Endpoint {
        Endpoint::v4([10, 100, 1, last], port)
    }

    fn reply(c: Endpoint, flags: u8, payload_len: u16) -> ReplyFacts {
        ReplyFacts { client: c, flags, payload_len, ..Default::default() }
    }

    fn syn_ack(c: Endpoint) -> ReplyFacts {
        reply(c, flags::SYN | flags::ACK, 0)
    }

    const T0: Duration = Duration::from_secs(7);

    #[test]
    fn a_held_syn_ack_goes_to_whoever_claims_its_client() {
        let mut early = EarlyReplies::default();
        assert!(early.hold(&syn_ack(client(2, 40001)), T0));
        assert!(early.hold(&syn_ack(client(2, 40001)), T0 + Duration::from_millis(1)), "a retransmission too");
        assert!(early.hold(&syn_ack(client(3, 40001)), T0));
        let mut got = Vec::new();
        early.take(&client(2, 40002), T0, &mut got);
        assert!(got.is_empty(), "another port");
        early.take(&client(2, 40001), T0, &mut got);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.client == client(2, 40001)));
        assert_eq!(early.len(), 1);
        got.clear();
        early.take(&client(2, 40001), T0, &mut got);
        assert!(got.is_empty(), "taken once");
    }

    #[test]
    fn a_whole_address_claim_takes_every_port_of_it_oldest_first() {
        let mut early = EarlyReplies::default();
        early.hold(&syn_ack(client(2, 40002)), T0);
        early.hold(&syn_ack(client(2, 40001)), T0 + Duration::from_millis(2));
        early.hold(&syn_ack(client(3, 40001)), T0);
        let mut got = Vec::new();
        early.take(&client(2, 0), T0, &mut got);
        assert_eq!(got.iter().map(|r| r.client.port).collect::<Vec<_>>(), [40002, 40001]);
        assert_eq!(early.len(), 1, "another address stays");
    }

    #[test]
    fn a_held_reply_is_older_by_its_time_held() {
        let mut early = EarlyReplies::default();
        let c = client(2, 40001);
        early.hold(&ReplyFacts { age_us: 300, ..syn_ack(c) }, T0);
        let mut got = Vec::new();
        early.take(&c, T0 + Duration::from_micros(2_500), &mut got);
        assert_eq!(got[0].age_us, 2_800, "what it waited before, and here");
    }

    #[test]
    fn only_a_sessions_opening_is_held() {
        let mut early = EarlyReplies::default();
        let c = client(2, 40001);
        assert!(!early.hold(&reply(c, flags::ACK, 0), T0), "a stray ACK of a released session");
        assert!(!early.hold(&reply(c, flags::FIN | flags::ACK, 0), T0));
        assert!(!early.hold(&reply(c, flags::RST | flags::ACK, 0), T0));
        assert!(!early.hold(&reply(c, flags::SYN | flags::ACK, 10), T0), "with data");
        assert!(!early.hold(&reply(c, flags::SYN, 0), T0), "not an answer");
        assert!(early.is_empty());
    }

    #[test]
    fn what_no_claim_comes_for_expires_after_the_hold() {
        let mut early = EarlyReplies::default();
        early.hold(&syn_ack(client(2, 40001)), T0);
        early.hold(&syn_ack(client(2, 40001)), T0 + HOLD / 2);
        early.hold(&syn_ack(client(3, 40001)), T0 + HOLD / 2);
        assert_eq!(early.expire(T0 + HOLD - Duration::from_micros(1)), 0);
        assert_eq!(early.expire(T0 + HOLD), 2, "a client's replies go together, by its first");
        assert_eq!(early.len(), 1);
        assert_eq!(early.expire(T0 + HOLD / 2 + HOLD), 1);
        assert!(early.is_empty());
    }

    #[test]
    fn a_client_taken_and_held_again_expires_by_its_new_time() {
        let mut early = EarlyReplies::default();
        let c = client(2, 40001);
        early.hold(&syn_ack(c), T0);
        early.hold(&syn_ack(client(3, 1)), T0);
        early.take(&c, T0, &mut Vec::new());
        early.hold(&syn_ack(c), T0 + HOLD / 2);
        assert_eq!(early.expire(T0 + HOLD), 1, "only the other client's");
        assert_eq!(early.len(), 1);
        assert_eq!(early.expire(T0 + HOLD / 2 + HOLD), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A SYN-ACK (or another reply, if not `opening`) to client port `port`, `ms` later.
        Reply { port: u16, opening: bool, ms: u64 },
        /// An OWN of client port `port` (0: the whole address), `ms` later.
        Own { port: u16, ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u16..6, any::<bool>(), 0u64..60).prop_map(|(port, opening, ms)| Op::Reply { port, opening, ms }),
            (0u16..6, 0u64..60).prop_map(|(port, ms)| Op::Own { port, ms }),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        /// Against a plain list of what was held: every opening held is delivered once, to a
        /// claim of its client, in the order held, within HOLD, aged by its wait; or expires.
        #[test]
        fn held_replies_go_once_to_their_claim_in_order_or_expire(ops in proptest::collection::vec(op(), 0..80)) {
            let mut early = EarlyReplies::default();
            let mut now = T0;
            let mut waiting: Vec<(Duration, ReplyFacts)> = Vec::new(); // the model
            let mut seq = 0u32;
            let (mut held, mut delivered, mut expired) = (0, 0, 0);
            for op in ops {
                match op {
                    Op::Reply { port, opening, ms } => {
                        now += Duration::from_millis(ms);
                        expired += early.expire(now);
                        seq += 1;
                        let flags = if opening { flags::SYN | flags::ACK } else { flags::ACK };
                        let r = ReplyFacts { seq: common::seq::SeqNum(seq), ..reply(client(2, port), flags, 0) };
                        let took = early.hold(&r, now);
                        prop_assert_eq!(took, opening);
                        if took {
                            held += 1;
                            waiting.push((now, r));
                        }
                    }
                    Op::Own { port, ms } => {
                        now += Duration::from_millis(ms);
                        expired += early.expire(now);
                        let mut got = Vec::new();
                        early.take(&client(2, port), now, &mut got);
                        delivered += got.len();
                        let mut last_seq = 0;
                        for g in &got {
                            prop_assert!(port == 0 || g.client.port == port, "another client's: {:?}", g);
                            let at = waiting.iter().position(|(_, r)| r.seq == g.seq);
                            prop_assert!(at.is_some(), "delivered twice, or never held: {:?}", g);
                            let (held_at, _) = waiting.remove(at.expect("checked"));
                            prop_assert!(now - held_at < HOLD, "delivered after its hold: {:?}", g);
                            prop_assert_eq!(u128::from(g.age_us), (now - held_at).as_micros(), "aged by its wait");
                            if port != 0 {
                                prop_assert!(g.seq.0 > last_seq, "in the order held");
                                last_seq = g.seq.0;
                            }
                        }
                    }
                }
                prop_assert_eq!(held, delivered + expired + early.len(), "none lost, none twice");
            }
        }
    }

    #[test]
    fn at_most_max_held_wait() {
        let mut early = EarlyReplies::default();
        for i in 0..MAX_HELD {
            assert!(early.hold(&syn_ack(Endpoint::v4([10, 0, (i >> 8) as u8, i as u8], 1000)), T0));
        }
        assert!(!early.hold(&syn_ack(client(2, 2)), T0), "full");
        assert_eq!(early.expire(T0 + HOLD), MAX_HELD);
        assert!(early.hold(&syn_ack(client(2, 2)), T0 + HOLD), "room again");
    }
}
