//! Random sessions replayed against a simulated test server over a lossy, duplicating,
//! reordering network, in virtual time: the server must receive exactly the client's byte
//! stream, in order, once, and the session must complete.

use std::collections::HashMap;

use common::{
    endpoint::Endpoint,
    facts::{option_bits, ReplyFacts},
    seq::SeqNum,
    tcp::flags::{ACK, FIN, PSH, RST, SYN},
};
use proptest::prelude::*;

use super::{captured, ep, sent, syn_options, Sent, CLIENT, ONLINE_ISN};
use crate::{capture::Link, mapping::parse_mappings, Config, Engine};

/// One request of a session and the size of the online server's answer to it.
#[derive(Clone, Debug)]
struct Request {
    size: usize,
    response: usize,
    /// Sent before the answer to the previous request arrived.
    pipelined: bool,
}

#[derive(Clone, Debug)]
struct SessionPlan {
    isn: u32,
    requests: Vec<Request>,
    /// Capture segment size: small, MSS-like, or GRO/TSO super-segments.
    chunk: usize,
    timestamps: bool,
}

#[derive(Clone, Debug)]
struct Net {
    loss: f64,
    duplicate: f64,
    /// Extra random delay in µs, which reorders.
    jitter: u64,
}

/// What the copier captured for a session: packets with capture times, and the byte stream.
fn capture(port: u16, plan: &SessionPlan) -> (Vec<(u64, Vec<u8>)>, Vec<u8>) {
    let isn = plan.isn;
    let mut packets = Vec::new();
    let mut t = 0u64;
    let mut push = |packets: &mut Vec<(u64, Vec<u8>)>, p: Vec<u8>| {
        t += 100;
        packets.push((t, p));
    };
    let opts = if plan.timestamps { syn_options(1) } else { crate::emit::Options::syn(1460, Some(7), true, None) };
    push(&mut packets, captured(port, SYN, isn, 0, opts.as_bytes(), &[]));
    push(&mut packets, captured(port, ACK, isn.wrapping_add(1), ONLINE_ISN + 1, &[], &[]));
    let mut stream = Vec::new();
    let mut received = 0usize; // online response bytes the client had when sending
    for (k, r) in plan.requests.iter().enumerate() {
        if k > 0 && !r.pipelined {
            received = plan.requests[..k].iter().map(|q| q.response).sum();
        }
        let start = stream.len();
        stream.extend((0..r.size).map(|i| ((k * 31 + i) % 251) as u8));
        for (j, chunk) in stream[start..].chunks(plan.chunk).enumerate() {
            let offset = (start + j * plan.chunk) as u32;
            let seq = isn.wrapping_add(1).wrapping_add(offset);
            push(&mut packets, captured(port, ACK | PSH, seq, ONLINE_ISN + 1 + received as u32, &[], chunk));
        }
    }
    let all: u32 = plan.requests.iter().map(|q| q.response as u32).sum();
    let fin_seq = isn.wrapping_add(1).wrapping_add(stream.len() as u32);
    push(&mut packets, captured(port, FIN | ACK, fin_seq, ONLINE_ISN + 1 + all, &[], &[]));
    (packets, stream)
}

/// A small but real TCP server: in-order receive only, answers each request once it has all of
/// it, retransmits its answers until acknowledged, closes after the client does.
struct SimTarget {
    me: Endpoint,
    client: Endpoint,
    isn: u32,
    mss: u16,
    window: u32,
    timestamps: bool,
    requests: Vec<usize>,
    responses: Vec<usize>,
    client_isn: Option<SeqNum>,
    rcv_nxt: SeqNum,
    received: Vec<u8>,
    answered: usize,
    /// Response bytes queued (answers so far), sent, and acknowledged.
    queued: u32,
    snd_nxt: u32,
    snd_una: u32,
    last_send: u64,
    fin_received: bool,
    fin_sent: bool,
    established: bool,
    closed: bool,
    window_violations: u32,
    last_ts: Option<u32>,
    /// The last TSval the engine sent this session, in sending order.
    sent_ts: Option<u32>,
    ts_went_back: bool,
}

const TARGET_RTO_US: u64 = 200_000;

impl SimTarget {
    fn new(client: Endpoint, me: Endpoint, plan: &SessionPlan, mss: u16, window: u32) -> Self {
        Self {
            me,
            client,
            isn: 0x8000_0000u32.wrapping_add(plan.isn.rotate_left(7)),
            mss,
            window,
            timestamps: plan.timestamps,
            requests: plan.requests.iter().map(|r| r.size).collect(),
            responses: plan.requests.iter().map(|r| r.response).collect(),
            client_isn: None,
            rcv_nxt: SeqNum(0),
            received: Vec::new(),
            answered: 0,
            queued: 0,
            snd_nxt: 0,
            snd_una: 0,
            last_send: 0,
            fin_received: false,
            fin_sent: false,
            established: false,
            closed: false,
            window_violations: 0,
            last_ts: None,
            sent_ts: None,
            ts_went_back: false,
        }
    }

    fn facts(&self, seq: SeqNum, flags: u8, payload_len: u16) -> ReplyFacts {
        let mut f = ReplyFacts {
            client: self.client,
            target: self.me,
            seq,
            ack: self.rcv_nxt,
            window: self.window.min(65535) as u16,
            flags,
            payload_len,
            ..Default::default()
        };
        if flags & SYN != 0 {
            f.options = option_bits::MSS | option_bits::WINDOW_SCALE;
            f.mss = self.mss;
            f.window_scale = 0;
        }
        if self.timestamps {
            f.options |= option_bits::TIMESTAMPS;
            f.ts_val = 1_000_000;
            f.ts_ecr = self.last_ts.unwrap_or(0);
        }
        f
    }

    fn data_seq(&self, offset: u32) -> SeqNum {
        SeqNum(self.isn) + 1 + offset
    }

    fn on_packet(&mut self, now: u64, p: &Sent, out: &mut Vec<ReplyFacts>) {
        if self.closed {
            return;
        }
        if let Some((val, _)) = p.options.timestamps {
            self.last_ts = Some(val.max(self.last_ts.unwrap_or(0)));
        }
        if p.flags & RST != 0 {
            self.closed = true;
            return;
        }
        if p.flags & SYN != 0 {
            // A repeated SYN (retransmitted or duplicated) changes nothing, as in a real stack:
            // before the handshake completes it gets the SYN-ACK again, after it an ACK.
            match self.client_isn {
                None => {
                    self.client_isn = Some(p.seq);
                    self.rcv_nxt = p.seq + 1;
                    out.push(self.facts(SeqNum(self.isn), SYN | ACK, 0));
                }
                Some(isn) if isn == p.seq && !self.established => out.push(self.facts(SeqNum(self.isn), SYN | ACK, 0)),
                Some(_) => out.push(self.facts(self.data_seq(self.snd_nxt), ACK, 0)),
            }
            return;
        }
        let Some(isn) = self.client_isn else { return };
        if p.flags & ACK != 0 {
            let acked = p.ack.since(SeqNum(self.isn) + 1);
            if acked >= 0 {
                self.established = true;
                let acked = acked as u32;
                if acked > self.snd_una && acked <= self.snd_nxt + u32::from(self.fin_sent) {
                    self.snd_una = acked;
                }
            }
        }
        let offset = p.seq.since(isn + 1);
        let len = p.payload.len() as u32 + u32::from(p.flags & FIN != 0);
        if len > 0 {
            let edge = self.rcv_nxt.since(isn + 1) as i64 + self.window as i64;
            if offset as i64 + p.payload.len() as i64 > edge {
                self.window_violations += 1;
            }
            if p.seq == self.rcv_nxt {
                self.received.extend_from_slice(&p.payload);
                self.rcv_nxt += p.payload.len() as u32;
                if p.flags & FIN != 0 {
                    self.rcv_nxt += 1;
                    self.fin_received = true;
                }
                // Answer every request that is now complete.
                while self.answered < self.requests.len()
                    && self.received.len() >= self.requests[..=self.answered].iter().sum::<usize>()
                {
                    self.queued += self.responses[self.answered] as u32;
                    self.answered += 1;
                }
            }
            out.push(self.facts(self.data_seq(self.snd_nxt), ACK, 0));
        }
        self.send_new(now, out);
    }

    fn send_new(&mut self, now: u64, out: &mut Vec<ReplyFacts>) {
        if !self.established {
            return;
        }
        while self.snd_nxt < self.queued {
            let len = (self.queued - self.snd_nxt).min(self.mss as u32);
            out.push(self.facts(self.data_seq(self.snd_nxt), ACK | PSH, len as u16));
            self.snd_nxt += len;
            self.last_send = now;
        }
        if self.fin_received && !self.fin_sent && self.answered == self.requests.len() && self.snd_nxt == self.queued {
            self.fin_sent = true;
            out.push(self.facts(self.data_seq(self.snd_nxt), FIN | ACK, 0));
            self.last_send = now;
        }
    }

    /// Go-back-N retransmission of unacknowledged answers (and the SYN-ACK, the FIN).
    fn on_tick(&mut self, now: u64, out: &mut Vec<ReplyFacts>) {
        if self.closed || now < self.last_send + TARGET_RTO_US {
            return;
        }
        if self.client_isn.is_some() && !self.established {
            out.push(self.facts(SeqNum(self.isn), SYN | ACK, 0));
        }
        if self.snd_una < self.snd_nxt || (self.fin_sent && self.snd_una <= self.snd_nxt) {
            self.snd_nxt = self.snd_una;
            self.fin_sent = false;
        }
        self.last_send = now;
        self.send_new(now, out);
    }

    fn next_tick(&self) -> Option<u64> {
        let pending = (self.client_isn.is_some() && !self.established)
            || self.snd_una < self.queued
            || (self.fin_sent && self.snd_una <= self.snd_nxt);
        (!self.closed && pending).then_some(self.last_send + TARGET_RTO_US)
    }

    fn done(&self) -> bool {
        self.fin_received && self.fin_sent && self.snd_una == self.snd_nxt + 1
    }
}

/// A deterministic PRNG (xorshift) so a failing case replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

enum Item {
    ToTarget(Sent),
    ToEngine(ReplyFacts),
}

/// Runs the sessions to the end; returns the targets for inspection.
fn run(
    plans: &[SessionPlan],
    net: &Net,
    capture_disorder: f64,
    mss: u16,
    window: u32,
    seed: u64,
) -> (Engine, Vec<(Vec<u8>, SimTarget)>) {
    let mut cfg = Config::new(parse_mappings("80-10.100.2.2:8080").unwrap());
    cfg.max_retransmits = 40;
    let mut engine = Engine::new(cfg);
    let mut rng = Rng(seed | 1);
    let target_ep = ep(super::TARGET, 8080);

    let mut captured_packets = Vec::new();
    let mut targets = HashMap::new();
    let mut streams = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let port = 40000 + i as u16;
        let (mut packets, stream) = capture(port, plan);
        // The capture itself duplicates and reorders (the SYN stays first).
        for j in 2..packets.len() {
            if rng.chance(capture_disorder) {
                let k = 2 + (rng.next() as usize) % (packets.len() - 2);
                let (a, b) = (packets[j].1.clone(), packets[k].1.clone());
                packets[j].1 = b;
                packets[k].1 = a;
            }
            if rng.chance(capture_disorder / 2.0) {
                let dup = packets[j].clone();
                packets.push((dup.0 + 50, dup.1));
            }
        }
        captured_packets.extend(packets.into_iter().map(|(t, p)| (t + i as u64 * 37, p)));
        targets.insert(ep(CLIENT, port), SimTarget::new(ep(CLIENT, port), target_ep, plan, mss, window));
        streams.push((ep(CLIENT, port), stream));
    }
    captured_packets.sort_by_key(|(t, _)| *t);

    let mut in_flight: Vec<(u64, u64, Item)> = Vec::new();
    let mut order = 0u64;
    let mut next_capture = 0;
    let mut now = 0u64;
    let mut schedule = |in_flight: &mut Vec<(u64, u64, Item)>, rng: &mut Rng, now: u64, item: Item| {
        if rng.chance(net.loss) {
            return;
        }
        let copies = if rng.chance(net.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 200 + if net.jitter > 0 { rng.next() % net.jitter } else { 0 };
            order += 1;
            let item = match &item {
                Item::ToTarget(s) => Item::ToTarget(s.clone()),
                Item::ToEngine(f) => Item::ToEngine(*f),
            };
            in_flight.push((now + delay, order, item));
        }
    };
    for _ in 0..2_000_000 {
        let all_done = next_capture == captured_packets.len()
            && targets.values().all(SimTarget::done)
            && engine.active_sessions() == 0;
        if all_done || now > 600_000_000 {
            break;
        }
        let t_capture = captured_packets.get(next_capture).map(|(t, _)| *t);
        let t_net = in_flight.iter().map(|(t, o, _)| (*t, *o)).min();
        let t_engine = engine.next_deadline();
        let t_target = targets.values().filter_map(SimTarget::next_tick).min();
        let Some(t) = [t_capture, t_net.map(|(t, _)| t), t_engine, t_target].into_iter().flatten().min() else { break };
        now = now.max(t);
        if t_capture == Some(t) {
            let (_, p) = &captured_packets[next_capture];
            engine.on_captured(now, Link::Ip, p);
            next_capture += 1;
        } else if t_net.map(|(t, _)| t) == Some(t) {
            let (_, o) = t_net.expect("present");
            let pos = in_flight.iter().position(|(_, oo, _)| *oo == o).expect("present");
            let (_, _, item) = in_flight.swap_remove(pos);
            match item {
                Item::ToTarget(s) => {
                    if let Some(target) = targets.get_mut(&s.src) {
                        let mut replies = Vec::new();
                        target.on_packet(now, &s, &mut replies);
                        for f in replies {
                            schedule(&mut in_flight, &mut rng, now, Item::ToEngine(f));
                        }
                    }
                }
                Item::ToEngine(f) => engine.on_reply(now, &f),
            }
        } else if t_engine == Some(t) {
            engine.on_timer(now);
        } else {
            let mut replies = Vec::new();
            for target in targets.values_mut() {
                if target.next_tick().is_some_and(|at| at <= now) {
                    target.on_tick(now, &mut replies);
                }
            }
            for f in replies {
                schedule(&mut in_flight, &mut rng, now, Item::ToEngine(f));
            }
        }
        for s in sent(&mut engine) {
            // In the order the engine sends: its timestamps never go backwards (PAWS).
            if let (Some((val, _)), Some(target)) = (s.options.timestamps, targets.get_mut(&s.src)) {
                if target.sent_ts.is_some_and(|last| val < last) {
                    target.ts_went_back = true;
                }
                target.sent_ts = Some(val);
            }
            schedule(&mut in_flight, &mut rng, now, Item::ToTarget(s));
        }
        engine.outbox().clear();
    }
    let results =
        streams.into_iter().map(|(client, stream)| (stream, targets.remove(&client).expect("target"))).collect();
    (engine, results)
}

fn request() -> impl Strategy<Value = Request> {
    (1usize..3000, 0usize..6000, proptest::bool::weighted(0.2)).prop_map(|(size, response, pipelined)| Request {
        size,
        response,
        pipelined,
    })
}

fn plan() -> impl Strategy<Value = SessionPlan> {
    (
        any::<u32>(),
        proptest::collection::vec(request(), 1..6),
        prop_oneof![1usize..100, 500usize..1449, 4000usize..20000],
        any::<bool>(),
    )
        .prop_map(|(isn, requests, chunk, timestamps)| SessionPlan { isn, requests, chunk, timestamps })
}

fn net() -> impl Strategy<Value = Net> {
    (0.0f64..0.15, 0.0f64..0.1, prop_oneof![Just(0u64), 1u64..3000]).prop_map(|(loss, duplicate, jitter)| Net {
        loss,
        duplicate,
        jitter,
    })
}

fn check(
    plans: &[SessionPlan],
    net: &Net,
    disorder: f64,
    mss: u16,
    window: u32,
    seed: u64,
) -> Result<(), TestCaseError> {
    let (engine, results) = run(plans, net, disorder, mss, window, seed);
    for (i, (stream, target)) in results.iter().enumerate() {
        prop_assert_eq!(
            target.received.len(),
            stream.len(),
            "session {}: byte count (counters {:?})",
            i,
            engine.counters()
        );
        prop_assert!(target.received == *stream, "session {}: the bytes differ", i);
        prop_assert!(target.fin_received, "session {}: no FIN", i);
        prop_assert_eq!(target.window_violations, 0, "session {}: sent beyond the window", i);
        prop_assert!(!target.ts_went_back, "session {}: a timestamp went backwards", i);
        prop_assert!(
            target.done(),
            "session {}: not closed both ways: fin_received {} fin_sent {} snd_una {} snd_nxt {} queued {} closed {}; counters {:?}",
            i,
            target.fin_received,
            target.fin_sent,
            target.snd_una,
            target.snd_nxt,
            target.queued,
            target.closed,
            engine.counters()
        );
    }
    let c = engine.counters();
    prop_assert_eq!(c.sessions_completed as usize, plans.len(), "counters {:?}", c);
    prop_assert_eq!(c.sessions_gave_up + c.sessions_timed_out + c.sessions_reset, 0);
    prop_assert_eq!(engine.active_sessions(), 0);
    prop_assert_eq!(engine.buffered_bytes(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_target_receives_exactly_the_client_stream(
        plans in proptest::collection::vec(plan(), 1..4),
        net in net(),
        disorder in 0.0f64..0.2,
        mss in 536u16..1461,
        window in prop_oneof![Just(65535u32), 3000u32..20000],
        seed in any::<u64>(),
    ) {
        check(&plans, &net, disorder, mss, window, seed)?;
    }
}

#[test]
fn a_clean_network_replays_a_keep_alive_session_exactly() {
    let plan = SessionPlan {
        isn: u32::MAX - 100,
        requests: (0..10).map(|i| Request { size: 200 + i * 50, response: 1000 + i * 300, pipelined: false }).collect(),
        chunk: 1448,
        timestamps: true,
    };
    check(&[plan], &Net { loss: 0.0, duplicate: 0.0, jitter: 0 }, 0.0, 1460, 65535, 1).unwrap();
}
