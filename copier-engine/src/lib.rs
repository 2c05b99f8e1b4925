//! The copier's session engine: replays captured client sessions towards the test server
//! exactly, with no I/O, so it is tested (and fuzzed) without root or a network.
//!
//! Inputs: captured client packets ([`Engine::on_captured`]) and the test server's reply facts
//! ([`Engine::on_reply`]), each with the current time in microseconds, and timer ticks
//! ([`Engine::on_timer`] at [`Engine::next_deadline`]). Outputs: IP packets to send and
//! ownership announcements for the intercepts, collected in the [`Outbox`].

pub mod admission;
mod answers;
pub mod baseline;
pub mod capture;
pub mod compare;
pub mod emit;
pub mod exchange;
pub mod mapping;
mod marks;
pub mod rewrite;
mod rto;
pub mod session;
mod stream;
mod table;
mod time_wait;
mod timers;

use std::{
    collections::{hash_map, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    ops::Range,
};

use common::{
    endpoint::Endpoint,
    facts::ReplyFacts,
    tcp::flags::{RST, SYN},
};

use self::{
    admission::Admission,
    capture::{ClientSegment, Link, Parsed},
    exchange::Exchanges,
    rewrite::{sampled, shifted_port, ClientAddrs, PortClass},
    session::{Session, SynParams},
    table::{Entry, SessionId, Table},
    time_wait::TimeWait,
    timers::Wheel,
};
use common::hash::Hasher;

use crate::mapping::Mapping;

/// Sessions opening at once per engine unless told otherwise: far above what normal replay to
/// a LAN test server needs (a handshake and a first request take a round trip or two), and a
/// bound on what a burst puts on the test server's listen queues at once.
pub const DEFAULT_MAX_OPENING: usize = 1024;

/// What the engine is told by the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub mappings: Vec<Mapping>,
    /// `-c`: addresses the copied clients appear from (default: their own).
    pub client_addrs: Option<ClientAddrs>,
    /// `-n`: copies of each session (at least 1).
    pub multiply: u16,
    /// `-f`: port shift between copies.
    pub port_shift: u16,
    /// `-r`: percentage of sessions replayed.
    pub sample_percent: u8,
    /// `--ramp`: `sample_percent` is reached after this long, rising from 1 %.
    pub ramp_us: u64,
    /// `--max-rate`, this engine's share: sessions started per second at most.
    pub max_sessions_per_s: Option<f64>,
    /// Pace requests by the test server's answers (tcpcopy's default; `-W` turns it off).
    pub wait_for_response: bool,
    /// `-O`: replay only sessions whose SYN was captured.
    pub only_complete: bool,
    /// `-t`: a session with no activity this long ends.
    pub idle_timeout_us: u64,
    pub max_sessions: usize,
    /// `--max-opening`: sessions opening at once (SYN or first bytes unacknowledged); more wait
    /// their turn, so a burst cannot overrun the test server's SYN and accept queues.
    pub max_opening: usize,
    /// `-m`: bytes of captured payload held at most.
    pub max_buffered_bytes: usize,
    pub max_retransmits: u32,
    /// An answer shorter than production's counts as complete (short) after this much quiet.
    pub answer_quiet_us: u64,
    /// `--answer-timeout`: a request taken but not answered lets the session go on after this
    /// long without progress (no acknowledgement, no answer byte); counted.
    pub answer_timeout_us: u64,
    /// Added to our TCP timestamp clock (milliseconds): the runtime passes the wall clock, so
    /// timestamps keep rising across runs and the test server's PAWS check (on a connection or
    /// TIME_WAIT left from an earlier run) accepts a rerun's segments.
    pub ts_offset_ms: u32,
    /// MSS of fabricated handshakes (sessions captured mid-stream).
    pub default_mss: u16,
    /// The largest IP packet the transmit path carries (an AF_XDP frame less its Ethernet
    /// header; the out interface's MTU): segments to a target whose MSS allows more are cut
    /// to fit, instead of being refused by the interface.
    pub max_packet: usize,
    /// The replay source ports this engine may use (its worker's share).
    pub ports: PortClass,
    /// `--payload-bytes`: the first bytes of each answer kept for the comparison with
    /// production's (0: no comparison).
    pub payload_bytes: usize,
    /// `--ignore-header`: HTTP headers the comparison leaves out.
    pub ignored_headers: compare::IgnoredHeaders,
    /// `--baseline`: the target running the stable build; what it differs from production in
    /// is noise, taken out of the other targets' differences.
    pub baseline: Option<Endpoint>,
}

impl Config {
    pub fn new(mappings: Vec<Mapping>) -> Self {
        Self {
            mappings,
            client_addrs: None,
            multiply: 1,
            port_shift: 1000,
            sample_percent: 100,
            ramp_us: 0,
            max_sessions_per_s: None,
            wait_for_response: true,
            only_complete: false,
            idle_timeout_us: 120_000_000,
            max_sessions: 1 << 20,
            max_opening: DEFAULT_MAX_OPENING,
            max_buffered_bytes: 512 << 20,
            max_retransmits: 8,
            answer_quiet_us: 500_000,
            answer_timeout_us: 5_000_000,
            ts_offset_ms: 0,
            default_mss: 1460,
            max_packet: usize::from(u16::MAX),
            ports: PortClass::ALL,
            payload_bytes: 0,
            ignored_headers: compare::IgnoredHeaders::default(),
            baseline: None,
        }
    }

    /// The online endpoints and the targets each is mapped to (several: fan-out), in the
    /// mappings' order.
    fn fan_out(&self) -> Vec<(mapping::OnlineEndpoint, Vec<Endpoint>)> {
        let mut groups: Vec<(mapping::OnlineEndpoint, Vec<Endpoint>)> = Vec::new();
        for m in &self.mappings {
            match groups.iter_mut().find(|(online, _)| *online == m.online) {
                Some((_, targets)) => targets.push(Endpoint::from(m.target)),
                None => groups.push((m.online, vec![Endpoint::from(m.target)])),
            }
        }
        groups
    }
}

/// The targets a captured flow is replayed to, copied out of the engine's table per packet.
#[derive(Clone, Copy)]
struct Targets {
    list: [Endpoint; mapping::MAX_FAN_OUT],
    len: u16,
}

impl Targets {
    fn new(targets: &[Endpoint]) -> Self {
        let mut list = [Endpoint::default(); mapping::MAX_FAN_OUT];
        let len = targets.len().min(mapping::MAX_FAN_OUT);
        list[..len].copy_from_slice(&targets[..len]);
        Self { list, len: len as u16 }
    }

    fn as_slice(&self) -> &[Endpoint] {
        &self.list[..self.len as usize]
    }
}

/// What happened, for the stats line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub sessions_started: u64,
    pub sessions_completed: u64,
    pub sessions_reset: u64,
    pub sessions_timed_out: u64,
    pub sessions_gave_up: u64,
    /// Sessions not started or dropped for the session or memory bound.
    pub sessions_shed: u64,
    /// Sessions left out by `-r` or `-O`.
    pub sessions_skipped: u64,
    /// Sessions left out by `--max-rate`.
    pub sessions_rate_limited: u64,
    /// Sessions that waited for their turn to open (`--max-opening`).
    pub sessions_queued: u64,
    /// Most sessions waiting at once (summed over workers: each worker's own peak). A capture
    /// file is read no faster than sessions open, so this stays near `--max-opening`.
    pub queued_peak: u64,
    /// Sessions whose source port clashed with a live one and moved to the next free port.
    pub port_probes: u64,
    pub packets_sent: u64,
    pub packets_retransmitted: u64,
    /// Requests sent (client data runs between the online server's answers; every copy counts).
    pub requests_sent: u64,
    pub payload_bytes_sent: u64,
    /// Captured frames the engine was shown (every one, whatever became of it).
    pub captured: u64,
    /// Captured frames that are not a TCP segment (ARP, UDP, a later IP fragment).
    pub captured_not_tcp: u64,
    /// Captured TCP segments to a port (or address) no `-x` mapping names.
    pub captured_unmapped: u64,
    /// Captured segments of the online server to its clients: production's answers, kept for
    /// the comparison (`--payload-bytes`) and otherwise left alone.
    pub captured_answers: u64,
    /// Captured resets of no live session: nothing to end, and no reason to start one.
    pub captured_stray_resets: u64,
    pub captured_malformed: u64,
    /// Reply facts of no live session.
    pub replies_unmatched: u64,
}

impl Counters {
    /// `name=value` pairs for the stats line.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("sessions", self.sessions_started),
            ("completed", self.sessions_completed),
            ("reset", self.sessions_reset),
            ("timed_out", self.sessions_timed_out),
            ("gave_up", self.sessions_gave_up),
            ("shed", self.sessions_shed),
            ("skipped", self.sessions_skipped),
            ("rate_limited", self.sessions_rate_limited),
            ("queued", self.sessions_queued),
            ("queued_peak", self.queued_peak),
            ("requests", self.requests_sent),
            ("sent", self.packets_sent),
            ("retransmitted", self.packets_retransmitted),
            ("bytes", self.payload_bytes_sent),
            ("captured", self.captured),
            ("not_tcp", self.captured_not_tcp),
            ("unmapped", self.captured_unmapped),
            ("answers_captured", self.captured_answers),
            ("stray_resets", self.captured_stray_resets),
            ("unparsed", self.captured_malformed),
            ("unmatched_replies", self.replies_unmatched),
        ]
    }
}

/// Reply facts with the first payload bytes the intercepts sent along (`--payload-bytes`), in
/// two reused buffers.
#[derive(Clone, Debug, Default)]
pub struct Replies {
    facts: Vec<ReplyFacts>,
    bytes: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl Replies {
    pub fn push(&mut self, facts: ReplyFacts, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.facts.push(facts);
        self.spans.push(start..self.bytes.len());
    }

    pub fn facts(&self) -> &[ReplyFacts] {
        &self.facts
    }

    /// The payload bytes that came with reply `i` (none if the intercept sent none).
    pub fn payload(&self, i: usize) -> &[u8] {
        self.spans.get(i).map_or(&[], |r| &self.bytes[r.clone()])
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    pub fn clear(&mut self) {
        self.facts.clear();
        self.bytes.clear();
        self.spans.clear();
    }
}

/// An announcement for the intercepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Replies to this client endpoint are ours.
    Own(Endpoint),
    /// No longer.
    Disown(Endpoint),
}

/// Packets and announcements produced since the caller last drained it. Its buffers are
/// reused, so a warmed-up engine allocates nothing per packet.
#[derive(Debug, Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    packets: Vec<Range<usize>>,
    pub events: Vec<Event>,
}

impl Outbox {
    /// The IP packets to send, in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.packets.iter().map(|r| &self.bytes[r.clone()])
    }

    /// Packets waiting to be sent.
    pub fn packet_count(&self) -> usize {
        self.packets.len()
    }

    /// Neither packets nor announcements.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty() && self.events.is_empty()
    }

    /// Forgets what was sent, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.packets.clear();
        self.events.clear();
    }
}

/// What a session may touch while handling an event.
pub struct Ctx<'a> {
    pub now: u64,
    pub config: &'a Config,
    pub counters: &'a mut Counters,
    pub exchanges: &'a mut Exchanges,
    pub pairing: &'a mut baseline::Pairing,
    out: &'a mut Outbox,
    scratch: Vec<u8>,
}

impl Ctx<'_> {
    fn send(&mut self, segment: &emit::Segment<'_>) {
        let start = self.out.bytes.len();
        emit::write(&mut self.out.bytes, segment);
        self.out.packets.push(start..self.out.bytes.len());
        self.counters.packets_sent += 1;
    }

    /// Our TCP timestamp clock: milliseconds, monotonic, so the test server's PAWS check never
    /// drops what we send (captured TSvals could go backwards across reordered captures); offset
    /// by the wall clock ([`Config::ts_offset_ms`]) so it keeps rising across runs.
    fn ts_now(&self) -> u32 {
        ((self.now / 1000) as u32).wrapping_add(self.config.ts_offset_ms)
    }
}

/// A captured flow and which copy of it.
type CaptureKey = (Endpoint, Endpoint, u16);

pub struct Engine {
    config: Config,
    admission: Admission,
    counters: Counters,
    exchanges: Exchanges,
    pairing: baseline::Pairing,
    /// [`Config::fan_out`].
    fan_out: Vec<(mapping::OnlineEndpoint, Vec<Endpoint>)>,
    out: Outbox,
    scratch: Vec<u8>,
    /// Sessions, live and lingering (closed cleanly; their ids stay in the maps).
    table: Table,
    by_capture: HashMap<CaptureKey, SessionId, Hasher>,
    by_replay: HashMap<Endpoint, SessionId, Hasher>,
    timers: Wheel<SessionId>,
    /// Timer entries being fired, kept for its allocation.
    due: Vec<(u64, SessionId)>,
    /// Flows not replayed (sampled out, mid-stream under `-O`, or shed), so that their later
    /// packets are neither counted again nor start them half-way; a new SYN clears the entry.
    declined: HashSet<CaptureKey, Hasher>,
    buffered: usize,
    /// Live sessions for which [`Session::is_opening`] holds, kept by [`Self::with_session`]
    /// and [`Self::remove`], the only places sessions change.
    opening: usize,
    /// Sessions waiting for their turn to open, oldest first.
    held: VecDeque<SessionId>,
    /// The largest `-n` this engine has had ([`Self::set_load`]): flows that started under it
    /// keep their copies.
    multiply_max: u16,
}

impl Engine {
    pub fn new(mut config: Config) -> Self {
        config.multiply = config.multiply.max(1);
        Self {
            multiply_max: config.multiply,
            admission: Admission::new(config.sample_percent, config.ramp_us, config.max_sessions_per_s),
            fan_out: config.fan_out(),
            config,
            counters: Counters::default(),
            exchanges: Exchanges::default(),
            pairing: baseline::Pairing::default(),
            out: Outbox::default(),
            scratch: Vec::new(),
            table: Table::default(),
            by_capture: HashMap::default(),
            by_replay: HashMap::default(),
            timers: Wheel::default(),
            due: Vec::new(),
            declined: HashSet::default(),
            buffered: 0,
            opening: 0,
            held: VecDeque::new(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// What each target answered, request by request.
    pub fn exchanges(&self) -> &Exchanges {
        &self.exchanges
    }

    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.out
    }

    pub fn active_sessions(&self) -> usize {
        self.table.len()
    }

    /// Sessions still retransmitting (see [`Session::awaiting_ack`]). A scan of every
    /// session: for the end of a replay, not for every packet.
    pub fn sessions_awaiting_ack(&self) -> usize {
        self.table.sessions().filter(|(_, s)| s.awaiting_ack()).count()
    }

    /// Captured payload bytes held now.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// A captured packet (client to online server), captured now.
    pub fn on_captured(&mut self, now: u64, link: Link, packet: &[u8]) {
        self.on_captured_at(now, now, link, packet);
    }

    /// A captured packet with its capture time (µs, any epoch): production's answer times are
    /// measured on that clock, not on the replay's.
    pub fn on_captured_at(&mut self, now: u64, captured_at: u64, link: Link, packet: &[u8]) {
        self.on_captured_round(now, captured_at, 0, link, packet);
    }

    /// [`Engine::on_captured_round`] for each of a batch of packets, the sessions of those a
    /// few ahead looked up and their records prefetched: their cache misses overlap with the
    /// work on the packets before them. Each packet is parsed once, when it is looked ahead at.
    pub fn on_captured_batch<'p>(
        &mut self,
        now: u64,
        round: u16,
        packets: impl Iterator<Item = (u64, Link, &'p [u8])> + Clone,
    ) {
        const AHEAD: usize = 8;
        let mut parsed: [Option<Parsed<'p>>; AHEAD] = Default::default();
        let mut ahead = packets.clone();
        let mut look_ahead = |engine: &Self, slot: &mut Option<Parsed<'p>>| {
            if let Some((_, link, packet)) = ahead.next() {
                let seg = capture::parse(link, packet);
                engine.prefetch_captured(round, &seg);
                *slot = Some(seg);
            }
        };
        for slot in &mut parsed {
            look_ahead(self, slot);
        }
        for (i, (captured_at, _, _)) in packets.enumerate() {
            let slot = &mut parsed[i % AHEAD];
            let seg = slot.take().expect("parsed when looked ahead at");
            look_ahead(self, slot);
            self.on_captured_segment(now, captured_at, round, seg);
        }
    }

    /// Starts loading the record of the session a captured client packet belongs to (its
    /// first copy's), if there is one.
    fn prefetch_captured(&self, round: u16, seg: &Parsed<'_>) {
        let Ok(Some(seg)) = seg else { return };
        let Some(targets) = self.targets_for(&seg.dst) else { return };
        let first = round.saturating_mul(self.multiply_max.saturating_mul(targets.len));
        if let Some(&id) = self.by_capture.get(&(seg.src, seg.dst, first)) {
            self.table.prefetch(id);
        }
    }

    /// A captured packet of round `round` of a looped capture (`--loop`): each round's copies
    /// are copies of their own (`round × -n` on), so a round replays in a fresh port space.
    pub fn on_captured_round(&mut self, now: u64, captured_at: u64, round: u16, link: Link, packet: &[u8]) {
        self.on_captured_segment(now, captured_at, round, capture::parse(link, packet));
    }

    fn on_captured_segment(&mut self, now: u64, captured_at: u64, round: u16, seg: Parsed<'_>) {
        self.counters.captured += 1;
        let seg = match seg {
            Ok(Some(seg)) => seg,
            Ok(None) => return self.counters.captured_not_tcp += 1,
            Err(_) => return self.counters.captured_malformed += 1,
        };
        let Some(targets) = self.targets_for(&seg.dst) else {
            if let Some(targets) = self.targets_for(&seg.src) {
                return self.on_production(now, round, targets.len, &seg);
            }
            return self.counters.captured_unmapped += 1;
        };
        // Each target gets every copy of the flow (fan-out), each copy its own source port.
        // `-n` copies of a new flow; a flow already replayed keeps the copies it started with
        // (`-n` changed since: `set_load`), so segments go to every copy index ever used.
        let t = targets.len;
        let copies = self.config.multiply.saturating_mul(t);
        let first = round.saturating_mul(self.multiply_max.saturating_mul(t));
        let span = self.multiply_max.saturating_mul(t);
        // Whether a copy of this flow is replayed already (looked up only when a copy is missing).
        let mut known = None;
        for copy in first..first.saturating_add(span) {
            let target = targets.list[usize::from((copy - first) % t)];
            let key = (seg.src, seg.dst, copy);
            let wanted = copy - first < copies;
            if self.declined.contains(&key) {
                if seg.flags & SYN == 0 {
                    continue;
                }
                self.declined.remove(&key);
            }
            let id = match self.by_capture.get(&key).copied() {
                Some(id) if self.is_new_incarnation(id, &seg) => {
                    // The 4-tuple is reused by a new connection: a fresh session takes the flow
                    // over. One still replaying what was captured before (at full replay speed
                    // its request may not even have left) finishes from its own replay
                    // endpoint, and the new one takes the next free one; any other goes.
                    if matches!(self.table.get(id), Some(Entry::Live(s)) if s.replaying()) {
                        self.by_capture.remove(&key);
                    } else {
                        self.remove(id);
                    }
                    if wanted {
                        self.start(now, key, target, targets, &seg)
                    } else {
                        None
                    }
                }
                Some(id) => Some(id),
                // A reset ends a session; it never starts one (there is nothing to replay).
                None if seg.flags & RST != 0 => {
                    if copy == first {
                        self.counters.captured_stray_resets += 1;
                    }
                    None
                }
                None if !wanted => None,
                // A copy missing from a flow in progress (`-n` grew since it started) is not
                // started in its middle; a flow new to the engine is, mid-stream or not.
                None if seg.flags & SYN == 0
                    && *known.get_or_insert_with(|| {
                        (first..first.saturating_add(span))
                            .any(|c| self.by_capture.contains_key(&(seg.src, seg.dst, c)))
                    }) =>
                {
                    None
                }
                None => self.start(now, key, target, targets, &seg),
            };
            if let Some(id) = id {
                // Production's timing is the same for every copy: each target's first records it.
                let at = (copy < t).then_some(captured_at);
                self.with_session(now, id, |s, ctx| s.on_client(ctx, &seg, at));
            }
        }
        self.enforce_memory_bound();
        self.release_held(now);
    }

    /// A new share of the flows (`-r`) and number of copies (`-n`) for flows that start from now
    /// on; flows in progress keep theirs, so no session is dropped or started in its middle.
    /// For live capture (round 0): a capture's rounds number their copies by the largest `-n`.
    pub fn set_load(&mut self, sample_percent: u8, multiply: u16) {
        self.config.sample_percent = sample_percent.clamp(1, 100);
        self.admission.set_percent(self.config.sample_percent);
        self.config.multiply = multiply.max(1);
        self.multiply_max = self.multiply_max.max(self.config.multiply);
    }

    /// The targets the online endpoint `online` is mapped to.
    fn targets_for(&self, online: &Endpoint) -> Option<Targets> {
        let ip = || SocketAddr::from(*online).ip();
        self.fan_out
            .iter()
            .find(|(o, _)| o.port == online.port && o.addr.is_none_or(|a| a == ip()))
            .map(|(_, targets)| Targets::new(targets))
    }

    /// A captured segment of the online server: production's answer, for every copy's session
    /// (`targets` of them a round and `-n` copy).
    fn on_production(&mut self, now: u64, round: u16, targets: u16, seg: &ClientSegment<'_>) {
        self.counters.captured_answers += 1;
        if self.config.payload_bytes == 0 {
            return;
        }
        let span = self.multiply_max.saturating_mul(targets);
        let first = round.saturating_mul(span);
        for copy in first..first.saturating_add(span) {
            if let Some(&id) = self.by_capture.get(&(seg.dst, seg.src, copy)) {
                self.with_session(now, id, |s, ctx| s.on_production(ctx, seg));
            }
        }
    }

    /// Lets held sessions open, oldest first, while fewer than `--max-opening` are opening.
    fn release_held(&mut self, now: u64) {
        while self.opening < self.config.max_opening.max(1) {
            let Some(id) = self.held.pop_front() else { break };
            let Some(session) = self.table.session_mut(id) else { continue };
            session.held = false;
            self.opening += usize::from(session.is_opening());
            self.with_session(now, id, |s, ctx| s.transmit(ctx));
        }
    }

    /// Sessions waiting for their turn to open.
    pub fn held_sessions(&self) -> usize {
        self.held.len()
    }

    /// A SYN with another ISN on a known 4-tuple is a new connection.
    fn is_new_incarnation(&self, id: SessionId, seg: &ClientSegment<'_>) -> bool {
        let isn = match self.table.get(id) {
            Some(Entry::Live(s)) => s.client_isn(),
            Some(Entry::Lingering(t)) => t.client_isn,
            None => return false,
        };
        seg.flags & SYN != 0 && isn != seg.seq
    }

    fn start(
        &mut self,
        now: u64,
        key: CaptureKey,
        target: Endpoint,
        targets: Targets,
        seg: &ClientSegment<'_>,
    ) -> Option<SessionId> {
        let (client, online, copy) = key;
        let has_syn = seg.flags & SYN != 0;
        if (self.config.only_complete && !has_syn) || !sampled(self.admission.percent(now), &client, &online) {
            if copy == 0 {
                self.counters.sessions_skipped += 1;
            }
            self.decline(key);
            return None;
        }
        if !self.admission.take(now) {
            self.counters.sessions_rate_limited += 1;
            self.decline(key);
            return None;
        }
        if self.active_sessions() >= self.config.max_sessions {
            self.counters.sessions_shed += 1;
            self.decline(key);
            return None;
        }
        let Some(replay_client) = self.replay_endpoint(&client, copy) else {
            self.decline(key);
            return None;
        };
        let syn = if has_syn {
            SynParams {
                isn: seg.seq,
                mss: seg.options.mss.unwrap_or(self.config.default_mss),
                window_scale: seg.options.window_scale,
                sack_permitted: seg.options.sack_permitted,
                timestamps: seg.options.timestamps.is_some(),
            }
        } else {
            // Captured mid-stream: a handshake of our own, just before the first byte seen.
            SynParams {
                isn: seg.seq - 1,
                mss: self.config.default_mss,
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: seg.options.timestamps.is_some(),
            }
        };
        let online_base = (!has_syn && seg.flags & common::tcp::flags::ACK != 0).then_some(seg.ack);
        // Under --baseline, the copies of one captured flow to its targets compare notes.
        let pair = self
            .config
            .baseline
            .filter(|b| self.config.payload_bytes > 0 && targets.len > 1 && targets.as_slice().contains(b))
            .map(|b| session::Pair {
                flow: (client, online, copy / targets.len),
                baseline: target == b,
                candidates: usize::from(targets.len) - 1,
            });
        let mut session = Session::new(replay_client, target, syn, online_base, self.config.payload_bytes > 0, now);
        session.pair = pair;
        let id = self.table.insert(key, session);
        self.by_capture.insert(key, id);
        self.by_replay.insert(replay_client, id);
        self.counters.sessions_started += 1;
        self.out.events.push(Event::Own(replay_client));
        if self.opening >= self.config.max_opening.max(1) {
            self.table.session_mut(id).expect("just inserted").held = true;
            self.held.push_back(id);
            self.counters.sessions_queued += 1;
            self.counters.queued_peak = self.counters.queued_peak.max(self.held.len() as u64);
        } else {
            self.opening += 1;
            self.with_session(now, id, |s, ctx| s.transmit(ctx));
        }
        Some(id)
    }

    /// Remembers a flow that is not replayed. Bounded: when full it starts over, at worst
    /// counting a declined flow twice.
    fn decline(&mut self, key: CaptureKey) {
        const MAX_DECLINED: usize = 1 << 16;
        if self.declined.len() >= MAX_DECLINED {
            self.declined.clear();
        }
        self.declined.insert(key);
    }

    /// The source endpoint copy `copy` of `client` is replayed from: rewritten by `-c`, port
    /// shifted by `-n`/`-f`, and moved to the next free port if a live session has it.
    fn replay_endpoint(&mut self, client: &Endpoint, copy: u16) -> Option<Endpoint> {
        let addr = match &self.config.client_addrs {
            Some(addrs) => Endpoint::from(SocketAddr::new(addrs.for_client(&client.addr, copy), 0)).addr,
            None => client.addr,
        };
        let mut port = self.config.ports.fit(shifted_port(client.port, copy, self.config.port_shift));
        for _ in 0..65536 {
            let candidate = Endpoint::v6(addr, port);
            if !self.by_replay.contains_key(&candidate) {
                return Some(candidate);
            }
            self.counters.port_probes += 1;
            port = self.config.ports.next(port);
        }
        self.counters.sessions_shed += 1;
        None
    }

    /// A reply fact from an intercept.
    pub fn on_reply(&mut self, now: u64, facts: &ReplyFacts) {
        let id = self.by_replay.get(&facts.client).copied();
        self.on_reply_to(now, id, facts, &[]);
    }

    /// A batch of reply facts, in order, as [`Self::on_reply`].
    pub fn on_replies(&mut self, now: u64, facts: &[ReplyFacts]) {
        self.replies(now, facts, |_| &[]);
    }

    /// A batch of replies with the payload bytes the intercepts sent along.
    pub fn on_replies_with_payload(&mut self, now: u64, replies: &Replies) {
        self.replies(now, &replies.facts, |i| replies.payload(i));
    }

    /// Their sessions are looked up a handful ahead and their slots prefetched: the lookups are
    /// independent, so their cache misses overlap instead of each waiting for the previous
    /// reply's work. An id found ahead whose session a reply before it ended reaches nothing
    /// (its slot's generation moved on), as a fresh lookup would.
    fn replies<'p>(&mut self, now: u64, facts: &[ReplyFacts], payload: impl Fn(usize) -> &'p [u8]) {
        const AHEAD: usize = 16;
        for (c, chunk) in facts.chunks(AHEAD).enumerate() {
            let mut ids = [None; AHEAD];
            for (id, f) in ids.iter_mut().zip(chunk) {
                *id = self.by_replay.get(&f.client).copied();
                if let Some(id) = *id {
                    self.table.prefetch(id);
                }
            }
            // Then what the records point to, read as they arrive.
            ids.iter().flatten().for_each(|&id| self.table.prefetch_outside(id));
            for (i, (&id, f)) in ids.iter().zip(chunk).enumerate() {
                self.on_reply_to(now, id, f, payload(c * AHEAD + i));
            }
        }
    }

    fn on_reply_to(&mut self, now: u64, id: Option<SessionId>, facts: &ReplyFacts, payload: &[u8]) {
        let Some(id) = id else {
            return self.counters.replies_unmatched += 1;
        };
        match self.table.get_mut(id) {
            Some(Entry::Live(s)) if s.target == facts.target => {
                self.with_session(now, id, |s, ctx| s.on_reply(ctx, facts, payload));
                self.release_held(now);
            }
            Some(Entry::Lingering(tw)) if tw.target == facts.target => {
                let mut ctx = Ctx {
                    now,
                    config: &self.config,
                    counters: &mut self.counters,
                    exchanges: &mut self.exchanges,
                    pairing: &mut self.pairing,
                    out: &mut self.out,
                    scratch: Vec::new(),
                };
                tw.on_reply(&mut ctx, facts);
            }
            _ => self.counters.replies_unmatched += 1,
        }
    }

    /// Runs every timer that is due.
    pub fn on_timer(&mut self, now: u64) {
        let mut due = std::mem::take(&mut self.due);
        loop {
            self.timers.take_due(now, &mut due);
            if due.is_empty() {
                break;
            }
            // The records come due about a second after they were touched, out of cache: start
            // loading them all before the first is read. Most are lingering records by then.
            due.iter().for_each(|&(_, id)| self.table.prefetch_slot(id));
            for (at, id) in due.drain(..) {
                self.fire(now, at, id);
            }
        }
        self.due = due;
        self.release_held(now);
    }

    /// Runs the timer entry `(at, id)` if it is still its session's (or record's) live one.
    fn fire(&mut self, now: u64, at: u64, id: SessionId) {
        match self.table.get_mut(id) {
            Some(Entry::Live(s)) if s.timer_at == Some(at) => {
                s.timer_at = None;
                self.with_session(now, id, |s, ctx| s.on_timer(ctx));
            }
            Some(Entry::Lingering(tw)) if tw.timer_at == Some(at) => {
                tw.timer_at = None;
                if now >= tw.until() {
                    self.remove(id);
                } else {
                    let until = tw.until();
                    schedule(&mut self.timers, &mut tw.timer_at, id, now, until);
                }
            }
            _ => {}
        }
    }

    /// When [`Self::on_timer`] should run next (possibly early: a superseded entry, or the
    /// start of a far slot of the timer wheel).
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    /// Runs `f` on a session with a context, then settles its timer, memory and end.
    fn with_session(&mut self, now: u64, id: SessionId, f: impl FnOnce(&mut Session, &mut Ctx<'_>)) {
        let Some(session) = self.table.session_mut(id) else { return };
        let before = session.buffered();
        let was_opening = session.is_opening();
        let mut ctx = Ctx {
            now,
            config: &self.config,
            counters: &mut self.counters,
            exchanges: &mut self.exchanges,
            pairing: &mut self.pairing,
            out: &mut self.out,
            scratch: std::mem::take(&mut self.scratch),
        };
        f(session, &mut ctx);
        self.opening = self.opening + usize::from(session.is_opening()) - usize::from(was_opening);
        let deadline = session.deadline(&ctx);
        self.scratch = ctx.scratch;
        self.buffered = self.buffered + session.buffered() - before;
        if session.end.is_some() {
            match session.closed() {
                Some(closed) => {
                    let mut tw = TimeWait::new(closed, now, session.timer_at);
                    let until = tw.until();
                    schedule(&mut self.timers, &mut tw.timer_at, id, now, until);
                    if let Some(session) = self.table.linger(id, tw) {
                        self.forget(&session);
                    }
                }
                None => self.remove(id),
            }
        } else if let Some(at) = deadline {
            // The session was just asked at `now`: a deadline not after it would only spin.
            schedule(&mut self.timers, &mut session.timer_at, id, now, at.max(now + 1));
        }
    }

    /// Settles the counts of a live session that leaves (its ids may stay in the maps).
    fn forget(&mut self, s: &Session) {
        self.opening -= usize::from(s.is_opening());
        self.buffered -= s.buffered();
    }

    /// Forgets a session, live or lingering, and releases its replay endpoint.
    fn remove(&mut self, id: SessionId) {
        let Some((key, entry)) = self.table.remove(id) else { return };
        let replay_client = match entry {
            Entry::Live(s) => {
                self.forget(&s);
                s.replay_client
            }
            Entry::Lingering(t) => t.replay_client,
        };
        self.by_replay.remove(&replay_client);
        // A new incarnation of the flow may have taken the key over.
        if let hash_map::Entry::Occupied(e) = self.by_capture.entry(key) {
            if *e.get() == id {
                e.remove();
            }
        }
        self.out.events.push(Event::Disown(replay_client));
    }

    /// Ends every session (the copier stops): those still open are reset on the test server so
    /// nothing is left half-open there, and counted as timed out.
    pub fn shutdown(&mut self, now: u64) {
        for id in self.table.ids() {
            // Lingering records have nothing to abort.
            self.with_session(now, id, |s, ctx| s.abort(ctx));
            self.remove(id);
        }
        self.pairing.flush(&mut self.exchanges);
    }

    /// Sheds the sessions holding the most captured bytes until under the `-m` bound.
    fn enforce_memory_bound(&mut self) {
        while self.buffered > self.config.max_buffered_bytes {
            let Some((id, _)) = self.table.sessions().max_by_key(|(_, s)| s.buffered()) else { break };
            self.counters.sessions_shed += 1;
            if let Some(key) = self.table.key(id) {
                self.decline(key);
            }
            self.remove(id);
        }
    }

    /// Timer entries (live and superseded), for tests of their bound.
    #[cfg(test)]
    fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// Sequence number of a live session's client ISN, for tests.
    #[cfg(test)]
    fn isn_of(&self, replay_client: &Endpoint) -> Option<common::seq::SeqNum> {
        match self.table.get(*self.by_replay.get(replay_client)?)? {
            Entry::Live(s) => Some(s.client_isn()),
            Entry::Lingering(t) => Some(t.client_isn),
        }
    }
}

/// Keeps one live timer entry per session (or time-wait record): adds one only when its
/// deadline moves earlier. The superseded entry is skipped when it comes up; a later deadline
/// is found when the earlier entry fires and the session is asked again.
fn schedule(timers: &mut Wheel<SessionId>, timer_at: &mut Option<u64>, id: SessionId, now: u64, at: u64) {
    let at = timers::coarsen(now, at);
    if timer_at.is_none_or(|scheduled| at < scheduled) {
        *timer_at = Some(at);
        timers.insert(at, id);
    }
}

#[cfg(test)]
mod tests;
