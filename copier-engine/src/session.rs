//! One replayed TCP session: the copier plays the client towards the test server.

use common::{
    endpoint::Endpoint,
    facts::ReplyFacts,
    seq::SeqNum,
    tcp::flags::{ACK, FIN, PSH, RST, SYN},
};

use super::{
    answers::SessionAnswers,
    capture::ClientSegment,
    compare::Answer,
    emit::{self, Options, TS_OPTION_LEN},
    exchange::Judged,
    exchange::Outcome,
    marks::Marks,
    rto::Rto,
    stream::Stream,
    time_wait::Closed,
    Ctx,
};

/// How a session ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The whole captured client stream, FIN included, was acknowledged (or the test server
    /// closed first and our FIN was acknowledged).
    Completed,
    /// The test server reset it, or the captured client did and we replayed the RST.
    Reset,
    /// Nothing happened for the idle timeout.
    TimedOut,
    /// The test server stopped acknowledging: retransmissions exhausted.
    GaveUp,
}

/// Where a session's exchanges meet the same exchanges replayed to the other targets of a
/// fan-out (`--baseline`).
#[derive(Clone, Copy, Debug)]
pub struct Pair {
    /// The captured flow (client, online endpoint) and which copy of it, apart from the target.
    pub flow: (Endpoint, Endpoint, u16),
    /// This session replays to the baseline.
    pub baseline: bool,
    /// Targets other than the baseline.
    pub candidates: usize,
}

/// What the SYN we send says.
#[derive(Clone, Copy, Debug)]
pub struct SynParams {
    pub isn: SeqNum,
    pub mss: u16,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: bool,
}

#[derive(Debug)]
pub struct Session {
    pub replay_client: Endpoint,
    pub target: Endpoint,
    syn: SynParams,
    /// Online sequence number of the first response byte (online ISN + 1), learnt from the
    /// client's first ACK, so captured acks become response byte counts.
    online_base: Option<SeqNum>,
    stream: Stream,
    marks: Marks,
    fin_at: Option<u32>,
    rst_at: Option<u32>,
    /// Most of production's answer the client acknowledged: the last request's answer, where
    /// no later request or close marks it.
    online_acked: u32,
    /// Production's timing as captured: when the client's latest request bytes were captured,
    /// while it waits for the first acknowledgement of an answer to them.
    online_request_at: Option<u64>,

    // The test server's side, from reply facts.
    target_isn: Option<SeqNum>,
    /// The target's MSS, or less where the transmit path carries less (`Config::max_packet`).
    target_mss: u16,
    target_ws: u8,
    timestamps: bool,
    ts_recent: u32,
    /// Next target sequence number we expect (what we acknowledge).
    rcv_nxt: SeqNum,
    target_fin: bool,
    /// Where the test server's FIN is in its answer stream.
    target_fin_at: Option<u32>,
    window: u32,
    /// What the comparison keeps (`--payload-bytes`), if it runs.
    answers: Option<Box<SessionAnswers>>,
    pub pair: Option<Pair>,

    // Our sending state, as offsets of the client stream.
    snd_una: u32,
    snd_nxt: u32,
    /// Highest offset ever sent: a retransmission rewinds `snd_nxt` below it.
    snd_max: u32,
    syn_acked: bool,
    fin_sent: bool,
    rto: Rto,
    rto_at: Option<u64>,
    retries: u32,
    rtt_probe: Option<(u32, u64)>,
    /// Target response bytes when the current request started, and when the last came.
    response_base: u32,
    request_started_at: u64,
    last_response_at: u64,
    /// When the test server last acknowledged new bytes: an upload in progress is progress.
    last_ack_at: u64,
    /// The current request's last new byte went out then; its answer's first byte came then.
    request_sent_at: Option<u64>,
    answer_started_at: Option<u64>,
    /// A SYN that met a connection left over on the test server was followed by a reset this
    /// many times.
    stale_resets: u8,
    last_activity: u64,
    pub end: Option<End>,
    /// Closed cleanly (both FINs exchanged, ours acknowledged): it lingers as a [`TimeWait`].
    ///
    /// [`TimeWait`]: super::time_wait::TimeWait
    lingers: bool,
    /// The time of this session's live entry in the engine's timer wheel.
    pub timer_at: Option<u64>,
    counted_complete: bool,
    /// Waiting for its turn to open (too many sessions were opening): sends nothing yet, buffers
    /// what is captured.
    pub held: bool,
}

/// Default MSS assumed when the test server announces none (RFC 9293).
const DEFAULT_TARGET_MSS: u16 = 536;
/// Our receive window: we never read the payload, so any window is fine; scaled by our SYN's
/// window scale it is large.
pub(super) const OUR_WINDOW: u16 = 0xffff;

impl Session {
    pub fn new(
        replay_client: Endpoint,
        target: Endpoint,
        syn: SynParams,
        online_base: Option<SeqNum>,
        keep_answers: bool,
        now: u64,
    ) -> Self {
        Self {
            replay_client,
            target,
            syn,
            online_base,
            stream: Stream::default(),
            marks: Marks::default(),
            fin_at: None,
            rst_at: None,
            online_acked: 0,
            online_request_at: None,
            target_isn: None,
            target_mss: DEFAULT_TARGET_MSS,
            target_ws: 0,
            timestamps: false,
            ts_recent: 0,
            rcv_nxt: SeqNum(0),
            target_fin: false,
            target_fin_at: None,
            window: 0,
            answers: keep_answers.then(Box::default),
            pair: None,
            snd_una: 0,
            snd_nxt: 0,
            snd_max: 0,
            syn_acked: false,
            fin_sent: false,
            rto: Rto::default(),
            rto_at: None,
            held: false,
            retries: 0,
            rtt_probe: None,
            response_base: 0,
            request_started_at: now,
            last_response_at: now,
            last_ack_at: now,
            request_sent_at: None,
            answer_started_at: None,
            stale_resets: 0,
            last_activity: now,
            end: None,
            lingers: false,
            timer_at: None,
            counted_complete: false,
        }
    }

    pub fn buffered(&self) -> usize {
        self.stream.buffered()
    }

    /// Opening: sent its SYN and not yet had its SYN, or its first captured bytes, acknowledged:
    /// it occupies the test server's SYN or accept queue.
    pub fn is_opening(&self) -> bool {
        self.end.is_none() && !self.held && (!self.syn_acked || (self.snd_una == 0 && self.stream.end() > 0))
    }

    /// Something it sent (SYN, data, FIN) is not acknowledged yet: it is retransmitting, and
    /// ends by delivering or by giving up, never by idling.
    pub fn awaiting_ack(&self) -> bool {
        self.end.is_none() && self.rto_at.is_some()
    }

    /// Still has captured bytes or a captured close to replay, or waits for what it sent to
    /// be acknowledged: a new connection on its 4-tuple must not cut it short.
    pub fn replaying(&self) -> bool {
        self.end.is_none()
            && (self.awaiting_ack()
                || self.snd_max < self.stream.end()
                || (self.fin_at.is_some() && !self.fin_sent)
                || self.rst_at.is_some())
    }

    pub fn client_isn(&self) -> SeqNum {
        self.syn.isn
    }

    fn offset_of(&self, seq: SeqNum) -> Option<u32> {
        let d = seq.since(self.syn.isn + 1);
        (d >= 0).then_some(d as u32)
    }

    /// The test server's answer so far, in its sequence space: its bytes and its FIN, as the
    /// client's acknowledgements count production's (a client that closes after a `Connection:
    /// close` answer acknowledges the server's FIN too).
    fn response_bytes(&self) -> u32 {
        self.target_isn.map_or(0, |isn| self.rcv_nxt.since(isn + 1).max(0) as u32)
    }

    /// A captured client segment of this session (not its first SYN). `captured_at`: its
    /// capture time, for the copy that records production's timing.
    pub fn on_client(&mut self, ctx: &mut Ctx<'_>, seg: &ClientSegment<'_>, captured_at: Option<u64>) {
        self.last_activity = ctx.now;
        if seg.flags & SYN != 0 {
            return; // a retransmitted SYN: ours has its own timer
        }
        if seg.flags & ACK != 0 && self.online_base.is_none() {
            // The client's first ACK: online ISN + 1 (or, mid-stream, the response so far).
            self.online_base = Some(seg.ack);
        }
        // How much of production's answer the client had when it sent this.
        let response = match (seg.flags & ACK != 0, self.online_base) {
            (true, Some(base)) => Some(seg.ack.since(base).max(0) as u32),
            _ => None,
        };
        if let Some(response) = response.filter(|&r| r > self.online_acked) {
            self.online_acked = response;
            if let (Some(at), Some(sent)) = (captured_at, self.online_request_at.take()) {
                let _ = ctx.exchanges.of(self.target).production_latency_us.record(at.saturating_sub(sent).max(1));
            }
        }
        let Some(offset) = self.offset_of(seg.seq) else { return };
        if !seg.payload.is_empty() {
            self.marks.add(offset, response.unwrap_or(0));
            self.keep_request(offset, seg.payload);
            self.stream.insert(offset, seg.payload);
            if captured_at.is_some() {
                self.online_request_at = captured_at;
            }
        }
        let after = offset + seg.payload.len() as u32;
        if seg.flags & FIN != 0 && self.fin_at.is_none() {
            self.fin_at = Some(after);
            // The close waits for the answers the client had before it closed.
            if let Some(response) = response {
                self.marks.add(after, response);
            }
        }
        if seg.flags & RST != 0 && self.rst_at.is_none() {
            self.rst_at = Some(offset);
            // So does a reset after the answer (a client that aborts once it has what it wants).
            if let Some(response) = response {
                self.marks.add(offset, response);
            }
        }
        self.transmit(ctx);
    }

    /// Keeps a request's first bytes for the comparison, where one starts (at 0 or at a mark).
    fn keep_request(&mut self, offset: u32, payload: &[u8]) {
        let Some(answers) = self.answers.as_deref_mut() else { return };
        match self.marks.starting_at(offset) {
            Some(m) => answers.request(m.start, m.response),
            None if offset == 0 => answers.request(0, 0),
            None => {}
        }
        answers.client_bytes(offset, payload);
    }

    /// A captured segment of the online server to this session's client: production's answer,
    /// kept for the comparison.
    pub fn on_production(&mut self, ctx: &Ctx<'_>, seg: &ClientSegment<'_>) {
        if seg.flags & SYN != 0 {
            self.online_base.get_or_insert(seg.seq + 1);
            return;
        }
        let (Some(base), Some(answers)) = (self.online_base, self.answers.as_deref_mut()) else { return };
        let Ok(offset) = u32::try_from(seg.seq.since(base)) else { return };
        if !seg.payload.is_empty() {
            answers.production_bytes(offset, seg.payload, ctx.config.payload_bytes);
        }
        if seg.flags & FIN != 0 {
            answers.production_fin.get_or_insert(offset + seg.payload.len() as u32);
        }
    }

    /// Starts loading what a reply reads outside the record (see [`super::table::Table::prefetch_outside`]).
    pub fn prefetch_outside(&self) {
        self.marks.prefetch();
    }

    /// A reply of the test server, with its first payload bytes if the intercept sent them.
    pub fn on_reply(&mut self, ctx: &mut Ctx<'_>, f: &ReplyFacts, payload: &[u8]) {
        self.last_activity = ctx.now;
        if self.end.is_some() {
            return; // the engine forgets an ended session (a clean close lingers as a TimeWait)
        }
        if f.flags & RST != 0 {
            if self.syn_acked && !self.in_receive_window(f.seq) {
                return; // RFC 793: another incarnation's reset, not this connection's
            }
            let stats = ctx.exchanges.of(self.target);
            if self.syn_acked {
                stats.sessions_reset_by_target += 1;
            } else if f.flags & ACK != 0 && f.ack == self.syn.isn + 1 {
                stats.sessions_refused += 1;
            } else {
                return; // not an answer to our SYN: a reset for another incarnation
            }
            self.finish(ctx, End::Reset);
            return;
        }
        if !self.syn_acked && f.flags & SYN == 0 && f.flags & ACK != 0 && f.ack != self.syn.isn + 1 {
            self.reset_stale_connection(ctx, f.ack);
            return;
        }
        if f.flags & SYN != 0 {
            if f.flags & ACK == 0 || f.ack != self.syn.isn + 1 {
                return;
            }
            if self.target_isn.is_none() {
                // Karn: no RTT sample from a retransmitted SYN.
                if let Some((_, sent)) = self.rtt_probe.take().filter(|_| self.retries == 0) {
                    self.rto.sample(ctx.now.saturating_sub(sent));
                }
                let o = f.tcp_options();
                self.target_isn = Some(f.seq);
                self.rcv_nxt = f.seq + 1;
                let fits = ctx.config.max_packet.saturating_sub(emit::header_len(&self.target));
                self.target_mss =
                    o.mss.unwrap_or(DEFAULT_TARGET_MSS).min(u16::try_from(fits).unwrap_or(u16::MAX)).max(64);
                // Window scaling applies only when both SYNs carried the option.
                self.target_ws = if self.syn.window_scale.is_some() { o.window_scale.unwrap_or(0).min(14) } else { 0 };
                self.timestamps = self.syn.timestamps && o.timestamps.is_some();
                self.window = f.window as u32;
                self.syn_acked = true;
                self.retries = 0;
                self.rto.reset_backoff();
                self.rto_at = None;
                self.request_started_at = ctx.now;
                self.last_response_at = ctx.now;
            }
            if let Some((val, _)) = f.tcp_options().timestamps {
                self.ts_recent = val;
            }
            self.transmit_acking(ctx);
            return;
        }
        let Some(_) = self.target_isn else { return };
        if let Some((val, _)) = f.tcp_options().timestamps {
            self.ts_recent = val;
        }
        // Their data (we never see it, only its length): acknowledge what is contiguous.
        let data_end = f.seq + f.payload_len as u32 + u32::from(f.flags & FIN != 0);
        let mut must_ack = false;
        if f.payload_len > 0 || f.flags & FIN != 0 {
            must_ack = true;
            if !f.seq.is_after(self.rcv_nxt) && data_end.is_after(self.rcv_nxt) {
                self.keep_target_answer(ctx, f.seq, payload);
                self.rcv_nxt = data_end;
                if f.payload_len > 0 {
                    self.last_response_at = ctx.now;
                    // When it reached the intercept, not when the intercept's pause let it go.
                    let arrived = ctx.now.saturating_sub(u64::from(f.age_us));
                    self.answer_started_at.get_or_insert(arrived.max(self.request_sent_at.unwrap_or(0)));
                }
                if f.flags & FIN != 0 {
                    self.target_fin = true;
                    self.target_fin_at = Some(self.response_bytes() - 1);
                }
            }
        }
        if f.flags & ACK != 0 {
            self.on_ack(ctx, f.ack, f.window);
        }
        if self.target_fin && !self.fin_sent && self.fin_at.is_none_or(|fin| fin > self.snd_max) {
            // The test server closed first: close our half too, whatever the capture still holds.
            self.fin_at = Some(self.snd_max);
        }
        if must_ack {
            self.transmit_acking(ctx);
        } else {
            self.transmit(ctx);
        }
    }

    /// Whether `seq` is within what we would accept next: from what we acknowledge, our
    /// advertised window on.
    fn in_receive_window(&self, seq: SeqNum) -> bool {
        let window = u64::from(OUR_WINDOW) << self.syn.window_scale.unwrap_or(0).min(14);
        u64::try_from(seq.since(self.rcv_nxt)).is_ok_and(|ahead| ahead <= window)
    }

    /// Keeps the test server's answer bytes from `seq` on, for the comparison.
    fn keep_target_answer(&mut self, ctx: &Ctx<'_>, seq: SeqNum, payload: &[u8]) {
        let (Some(answers), Some(isn)) = (self.answers.as_deref_mut(), self.target_isn) else { return };
        let in_answer = u32::try_from(seq.since(isn + 1)).ok().and_then(|o| o.checked_sub(self.response_base));
        if let (Some(offset), false) = (in_answer, payload.is_empty()) {
            answers.target_bytes(offset, payload, ctx.config.payload_bytes);
        }
    }

    /// [`Self::transmit`], and acknowledges the target's latest: every segment it sends carries
    /// that acknowledgement, so a bare ACK goes only when nothing else does (as a client's
    /// stack piggybacks its ACK on the request it has ready). One packet fewer per handshake
    /// and per answer followed at once by the next request or the FIN.
    fn transmit_acking(&mut self, ctx: &mut Ctx<'_>) {
        let before = ctx.counters.packets_sent;
        self.transmit(ctx);
        if ctx.counters.packets_sent == before {
            self.send_ack(ctx);
        }
    }

    fn on_ack(&mut self, ctx: &mut Ctx<'_>, ack: SeqNum, window: u16) {
        self.window = (window as u32) << self.target_ws;
        let Some(acked) = self.offset_of(ack) else { return };
        let limit = self.snd_max + u32::from(self.fin_sent);
        if acked > self.snd_una && acked <= limit {
            self.snd_una = acked;
            self.snd_nxt = self.snd_nxt.max(acked.min(self.snd_max));
            self.stream.release(acked.min(self.stream.end()));
            if let Some((end, sent)) = self.rtt_probe {
                if acked >= end {
                    self.rtt_probe = None;
                    if self.retries == 0 {
                        self.rto.sample(ctx.now.saturating_sub(sent));
                    }
                }
            }
            self.retries = 0;
            self.last_ack_at = ctx.now;
            self.rto.reset_backoff();
            self.rto_at = (self.snd_una < limit).then(|| ctx.now + self.rto.current());
        }
        if self.fin_sent && self.fin_at.is_some_and(|fin| self.snd_una == fin + 1) && !self.counted_complete {
            self.counted_complete = true;
            ctx.counters.sessions_completed += 1;
        }
        if self.counted_complete && self.target_fin {
            self.close_cleanly(ctx);
        }
    }

    /// The last sign of life of the current exchange: its start, an acknowledgement of new
    /// bytes (a large upload takes a while), an answer byte.
    fn progress_at(&self) -> u64 {
        self.request_started_at.max(self.last_ack_at).max(self.last_response_at)
    }

    /// Whether what starts at the current mark (the next request, the client's FIN or RST) may
    /// go: the request before it was taken and answered as production answered it, or the
    /// answer timeout ran out (docs/architecture.md §2, rule 4). Judges that exchange.
    fn gate_open(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if !ctx.config.wait_for_response || self.target_fin {
            return true;
        }
        let Some(mark) = self.marks.current() else { return true };
        if self.snd_nxt < mark.start {
            return true;
        }
        if self.snd_una < mark.start {
            return false; // not taken yet: retransmission sees to it
        }
        let expected = mark.response - self.marks.previous_response();
        let got = self.response_bytes().saturating_sub(self.response_base);
        let outcome = if got >= expected {
            Outcome::Full
        } else if got > 0 && ctx.now >= self.last_response_at + ctx.config.answer_quiet_us {
            Outcome::Short
        } else if ctx.now >= self.progress_at() + ctx.config.answer_timeout_us {
            ctx.exchanges.of(self.target).answer_timeouts += 1;
            if got > 0 {
                Outcome::Short
            } else {
                Outcome::Unanswered
            }
        } else {
            return false;
        };
        self.judge(ctx, outcome);
        self.marks.advance();
        self.response_base = self.response_bytes();
        self.request_started_at = ctx.now;
        true
    }

    /// Counts the current exchange's outcome and the test server's first-byte latency, and
    /// compares its answer with production's.
    fn judge(&mut self, ctx: &mut Ctx<'_>, outcome: Outcome) {
        self.compare_answer(ctx, outcome);
        let stats = ctx.exchanges.of(self.target);
        stats.count(outcome);
        if let (Some(sent), Some(answered)) = (self.request_sent_at.take(), self.answer_started_at.take()) {
            if answered >= sent {
                let _ = stats.target_latency_us.record((answered - sent).max(1));
            }
        }
    }

    /// Compares the current exchange's answer with production's, where both were seen, and
    /// counts it (under `--baseline`, once the baseline's copy of it is judged too).
    fn compare_answer(&mut self, ctx: &mut Ctx<'_>, outcome: Outcome) {
        if self.answers.is_none() {
            return; // before the boundaries are read: past the current one, they are cold
        }
        let i = self.marks.index();
        let request_start = self.marks.start_of(i);
        let (before, after) = self.marks.answer_of(i);
        let answer_end = after.unwrap_or(self.online_acked.max(before));
        let (got_start, got_end) = (self.response_base, self.response_bytes());
        let Some(answers) = self.answers.as_deref_mut() else { return };
        let kept = answers.take(request_start);
        let answered = matches!(outcome, Outcome::Full | Outcome::Short);
        // Payload lengths: each side's FIN takes a sequence number, not a byte.
        let fin_in = |fin: Option<u32>, start: u32, end: u32| u32::from(fin.is_some_and(|f| f >= start && f < end));
        let judged = kept.filter(|k| answered && !k.request.is_empty() && answer_end >= k.answer_start).and_then(|k| {
            let production_len =
                answer_end - k.answer_start - fin_in(answers.production_fin, k.answer_start, answer_end);
            let target_len = got_end.saturating_sub(got_start) - fin_in(self.target_fin_at, got_start, got_end);
            let unseen =
                (production_len > 0 && k.production.is_empty()) || (target_len > 0 && answers.target.is_empty());
            (!unseen).then(|| {
                Judged::new(
                    &k.request,
                    Answer { len: production_len, head: &k.production },
                    Answer { len: target_len, head: &answers.target },
                    &ctx.config.ignored_headers,
                )
            })
        });
        answers.target.clear();
        let comparison = &mut ctx.exchanges.of(self.target).comparison;
        if answered && judged.is_none() {
            comparison.not_compared += 1;
        }
        match (self.pair, judged) {
            (None, Some(j)) => comparison.count(j),
            // The baseline says what it saw even when it has nothing to compare: the
            // candidates waiting for it are then counted as they are.
            (Some(p), judged) if p.baseline => {
                let noise = judged.as_ref().map(|j| j.difference.clone());
                if let Some(j) = judged {
                    comparison.count(j);
                }
                let key = (p.flow.0, p.flow.1, p.flow.2, request_start);
                ctx.pairing.baseline(ctx.exchanges, key, noise, p.candidates);
            }
            (Some(p), Some(j)) => {
                let key = (p.flow.0, p.flow.1, p.flow.2, request_start);
                ctx.pairing.candidate(ctx.exchanges, key, self.target, j, p.candidates);
            }
            // Not compared: counted above.
            _ => {}
        }
    }

    /// The session ends: judges the requests that went out and were not judged yet (the one
    /// in progress; under `-W`, every one, on the answer's total).
    fn judge_rest(&mut self, ctx: &mut Ctx<'_>) {
        let outcome = |got: u32, expected: u32| match (got, expected) {
            (_, 0) => Outcome::NotAnsweredOnline,
            (g, e) if g >= e => Outcome::Full,
            (0, _) => Outcome::Unanswered,
            _ => Outcome::Short,
        };
        let start_of = |s: &Self, i: usize| s.marks.start_of(i);
        let answer_of = |s: &Self, i: usize| {
            let (before, after) = s.marks.answer_of(i);
            (before, after.unwrap_or(s.online_acked.max(before)))
        };
        if ctx.config.wait_for_response {
            let i = self.marks.index();
            if self.snd_max > start_of(self, i) {
                let (before, after) = answer_of(self, i);
                let got = self.response_bytes().saturating_sub(self.response_base);
                self.judge(ctx, outcome(got, after - before));
            }
            return;
        }
        let total = self.response_bytes();
        let stats = ctx.exchanges.of(self.target);
        for i in 0..=self.marks.len() {
            if self.snd_max <= start_of(self, i) {
                break;
            }
            let (before, after) = answer_of(self, i);
            stats.count(outcome(total.saturating_sub(before).min(after - before), after - before));
        }
    }

    /// When a closed gate should be looked at again.
    fn gate_deadline(&self, ctx: &Ctx<'_>) -> Option<u64> {
        let mark = self.marks.current()?;
        // Exactly when `gate_open` would wait: a deadline for an open gate would fire forever.
        if !ctx.config.wait_for_response || self.target_fin || self.snd_nxt < mark.start || self.snd_una < mark.start {
            return None;
        }
        let timeout = self.progress_at() + ctx.config.answer_timeout_us;
        let quiet = self.last_response_at + ctx.config.answer_quiet_us;
        Some(if self.response_bytes() > self.response_base { quiet.min(timeout) } else { timeout })
    }

    /// Where the test server expects our next byte: its latest acknowledgement. A reset
    /// anywhere else only draws a challenge ACK (RFC 5961) and leaves the connection open.
    fn rst_seq(&self) -> SeqNum {
        self.syn.isn + 1 + self.snd_una
    }

    /// Our SYN met a connection the test server still holds for this 4-tuple (left by an
    /// earlier run): it answered with an ACK of that connection. As a client's stack does, reset
    /// it at that acknowledgement and send the SYN again (RFC 9293 §3.10.7.3).
    fn reset_stale_connection(&mut self, ctx: &mut Ctx<'_>, ack: SeqNum) {
        const MAX_STALE_RESETS: u8 = 3;
        if self.stale_resets >= MAX_STALE_RESETS {
            return; // the SYN's own retransmission goes on, and gives up in the end
        }
        self.stale_resets += 1;
        ctx.exchanges.of(self.target).stale_connections_reset += 1;
        ctx.send(&emit::Segment {
            src: self.replay_client,
            dst: self.target,
            seq: ack,
            ack: SeqNum(0),
            flags: RST,
            window: 0,
            options: &[],
            payload: &[],
        });
        self.send_syn(ctx);
    }

    /// Sends whatever is allowed now: the SYN, data within the window and the pacing gate, the
    /// FIN, a replayed RST.
    pub fn transmit(&mut self, ctx: &mut Ctx<'_>) {
        if self.end.is_some() || self.held {
            return;
        }
        if !self.syn_acked {
            if self.rto_at.is_none() {
                self.send_syn(ctx);
            }
            return;
        }
        if let Some(rst) = self.rst_at {
            // A client's reset waits, like its FIN, for the answers it had before it reset.
            if self.snd_nxt >= rst.min(self.stream.end()) && self.gate_open(ctx) {
                self.send_flags(ctx, RST | ACK, self.rst_seq());
                self.finish(ctx, End::Reset);
                return;
            }
        }
        let mss = (self.target_mss as usize).saturating_sub(if self.timestamps { TS_OPTION_LEN } else { 0 }).max(1);
        loop {
            if !self.gate_open(ctx) {
                break;
            }
            let pacing = ctx.config.wait_for_response && !self.target_fin;
            let limit = if pacing { self.marks.current().map_or(u32::MAX, |m| m.start) } else { u32::MAX };
            let stop =
                self.stream.end().min(limit).min(self.rst_at.unwrap_or(u32::MAX)).min(self.fin_at.unwrap_or(u32::MAX));
            let window_end = self.snd_una.saturating_add(self.window.max(1));
            let len = (stop.saturating_sub(self.snd_nxt) as usize)
                .min(mss)
                .min(window_end.saturating_sub(self.snd_nxt) as usize);
            if len == 0 {
                break;
            }
            let retransmission = self.snd_nxt < self.snd_max;
            self.send_data(ctx, self.snd_nxt, len, retransmission);
            self.snd_nxt += len as u32;
            self.snd_max = self.snd_max.max(self.snd_nxt);
        }
        if let Some(fin) = self.fin_at {
            if !self.fin_sent && self.snd_nxt == fin && self.stream.end() >= fin && self.gate_open(ctx) {
                self.fin_sent = true;
                self.send_flags(ctx, FIN | ACK, self.syn.isn + 1 + fin);
                self.arm_rto(ctx);
            }
        }
    }

    fn arm_rto(&mut self, ctx: &Ctx<'_>) {
        if self.rto_at.is_none() {
            self.rto_at = Some(ctx.now + self.rto.current());
        }
    }

    fn ts_option(&self, ctx: &Ctx<'_>) -> Options {
        if self.timestamps {
            Options::timestamps(ctx.ts_now(), self.ts_recent)
        } else {
            Options::default()
        }
    }

    fn send_syn(&mut self, ctx: &mut Ctx<'_>) {
        let ts = self.syn.timestamps.then(|| (ctx.ts_now(), 0));
        let options = Options::syn(self.syn.mss, self.syn.window_scale, self.syn.sack_permitted, ts);
        ctx.send(&emit::Segment {
            src: self.replay_client,
            dst: self.target,
            seq: self.syn.isn,
            ack: SeqNum(0),
            flags: SYN,
            window: OUR_WINDOW,
            options: options.as_bytes(),
            payload: &[],
        });
        if self.rtt_probe.is_none() && self.retries == 0 {
            self.rtt_probe = Some((0, ctx.now));
        }
        self.rto_at = Some(ctx.now + self.rto.current());
    }

    fn send_data(&mut self, ctx: &mut Ctx<'_>, offset: u32, len: usize, retransmission: bool) {
        let options = self.ts_option(ctx);
        let mut payload = std::mem::take(&mut ctx.scratch);
        payload.clear();
        self.stream.copy_to(offset, len, &mut payload);
        ctx.send(&emit::Segment {
            src: self.replay_client,
            dst: self.target,
            seq: self.syn.isn + 1 + offset,
            ack: self.rcv_nxt,
            flags: ACK | PSH,
            window: OUR_WINDOW,
            options: options.as_bytes(),
            payload: &payload,
        });
        ctx.scratch = payload;
        ctx.counters.payload_bytes_sent += len as u64;
        if retransmission {
            ctx.counters.packets_retransmitted += 1;
        } else {
            ctx.counters.requests_sent += self.marks.requests_starting_in(offset, offset + len as u32);
            self.request_sent_at = Some(ctx.now);
            if self.rtt_probe.is_none() {
                self.rtt_probe = Some((offset + len as u32, ctx.now));
            }
        }
        self.arm_rto(ctx);
    }

    fn send_flags(&mut self, ctx: &mut Ctx<'_>, flags: u8, seq: SeqNum) {
        let options = self.ts_option(ctx);
        ctx.send(&emit::Segment {
            src: self.replay_client,
            dst: self.target,
            seq,
            ack: self.rcv_nxt,
            flags,
            window: OUR_WINDOW,
            options: options.as_bytes(),
            payload: &[],
        });
    }

    fn send_ack(&mut self, ctx: &mut Ctx<'_>) {
        self.send_flags(ctx, ACK, self.syn.isn + 1 + self.snd_nxt + u32::from(self.fin_sent));
    }

    /// Timers: retransmission, the pacing gate's fallbacks, the idle timeout.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        if self.end.is_some() {
            return;
        }
        if ctx.now >= self.last_activity + ctx.config.idle_timeout_us {
            if self.syn_acked {
                self.send_flags(ctx, RST | ACK, self.rst_seq());
            }
            self.finish(ctx, if self.counted_complete { End::Completed } else { End::TimedOut });
            return;
        }
        if self.rto_at.is_some_and(|at| ctx.now >= at) {
            self.rto_at = None;
            self.retries += 1;
            if self.retries > ctx.config.max_retransmits {
                if self.syn_acked {
                    self.send_flags(ctx, RST | ACK, self.rst_seq());
                }
                self.finish(ctx, End::GaveUp);
                return;
            }
            self.rto.back_off();
            ctx.counters.packets_retransmitted += 1;
            if !self.syn_acked {
                self.send_syn(ctx);
                return;
            }
            // Go back to the first unacknowledged byte (the FIN too, if it is not acknowledged).
            if self.fin_sent && self.fin_at.is_some_and(|fin| self.snd_una <= fin) {
                self.fin_sent = false;
            }
            self.snd_nxt = self.snd_una;
            self.transmit(ctx);
            if self.snd_una < self.snd_max || self.fin_sent {
                self.arm_rto(ctx);
            }
            return;
        }
        self.transmit(ctx);
    }

    /// The earliest time [`Self::on_timer`] has something to do.
    pub fn deadline(&self, ctx: &Ctx<'_>) -> Option<u64> {
        if self.end.is_some() {
            return None;
        }
        let idle = self.last_activity + ctx.config.idle_timeout_us;
        [Some(idle), self.rto_at, self.gate_deadline(ctx)].into_iter().flatten().min()
    }

    /// One line of state, for a session ended while it still had work.
    pub fn describe(&self, now: u64) -> String {
        let mark = self.marks.current();
        format!(
            "{} -> {}: syn_acked={} snd_una={} snd_nxt={} snd_max={} captured_end={} fin_at={:?} window={} \
             request {}/{} (starts at {:?}, online answer so far {:?}) target answered {} since request start {} \
             (idle {} ms) target_fin={}",
            self.replay_client,
            self.target,
            self.syn_acked,
            self.snd_una,
            self.snd_nxt,
            self.snd_max,
            self.stream.end(),
            self.fin_at,
            self.window,
            self.marks.index(),
            self.marks.len(),
            mark.map(|m| m.start),
            mark.map(|m| m.response),
            self.response_bytes(),
            self.response_base,
            now.saturating_sub(self.last_activity) / 1000,
            self.target_fin,
        )
    }

    /// The copier is stopping: reset the session on the test server if it is open there.
    pub fn abort(&mut self, ctx: &mut Ctx<'_>) {
        if self.end.is_none() {
            if self.stream.buffered() > 0 {
                // Unsent or unacknowledged bytes, or bytes past a hole the capture never filled.
                log::warn!(
                    "ending a session with {} bytes not delivered: {}",
                    self.stream.buffered(),
                    self.describe(ctx.now)
                );
            }
            if self.syn_acked {
                self.send_flags(ctx, RST | ACK, self.rst_seq());
            }
            self.finish(ctx, if self.counted_complete { End::Completed } else { End::TimedOut });
        }
    }

    /// How long a lingering session waits for another FIN retransmission before it goes.
    fn linger_quiet(&self) -> u64 {
        (2 * self.rto.current()).clamp(1_000_000, 10_000_000)
    }

    /// Both FINs exchanged and ours acknowledged: done, lingering a little.
    fn close_cleanly(&mut self, ctx: &mut Ctx<'_>) {
        if self.end.is_none() {
            self.finish(ctx, End::Completed);
            self.lingers = true;
        }
    }

    /// What its [`TimeWait`](super::time_wait::TimeWait) needs, if it closed cleanly.
    pub(super) fn closed(&self) -> Option<Closed> {
        self.lingers.then(|| Closed {
            replay_client: self.replay_client,
            target: self.target,
            client_isn: self.syn.isn,
            seq: self.syn.isn + 1 + self.snd_nxt + u32::from(self.fin_sent),
            ack: self.rcv_nxt,
            ts_recent: self.timestamps.then_some(self.ts_recent),
            quiet: self.linger_quiet(),
        })
    }

    pub fn finish(&mut self, ctx: &mut Ctx<'_>, end: End) {
        if self.end.is_none() {
            self.judge_rest(ctx);
            self.end = Some(end);
            let c = &mut ctx.counters;
            match end {
                End::Completed if !self.counted_complete => c.sessions_completed += 1,
                End::Completed => {}
                End::Reset => c.sessions_reset += 1,
                End::TimedOut => c.sessions_timed_out += 1,
                End::GaveUp => c.sessions_gave_up += 1,
            }
        }
    }
}
