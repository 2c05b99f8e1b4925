//! What stays of a cleanly closed session while it lingers, as TIME_WAIT: enough to acknowledge
//! a retransmitted FIN again (our last ACK may be lost) and to keep its replay endpoint taken.
//!
//! Linux keeps a small `inet_timewait_sock` instead of the whole socket for the same reason: at
//! thousands of sessions a second a linger of seconds holds more closed sessions than live
//! ones. As whole sessions they held their buffers and crowded the live ones' table, whose
//! lookups are mostly cache misses (figures: docs/bench.md, "Design choices").

use common::{
    endpoint::Endpoint,
    facts::ReplyFacts,
    seq::SeqNum,
    tcp::flags::{ACK, FIN, RST},
};

use super::{
    emit::{self, Options},
    session::OUR_WINDOW,
    Ctx,
};

/// The longest a closed session lingers, however often the test server retransmits its FIN
/// (TIME_WAIT's 2 × MSL).
const CAP_US: u64 = 60_000_000;

#[derive(Debug)]
pub struct TimeWait {
    pub replay_client: Endpoint,
    pub target: Endpoint,
    pub client_isn: SeqNum,
    /// Our next sequence number, past our FIN.
    seq: SeqNum,
    /// What we acknowledge, past the test server's FIN.
    ack: SeqNum,
    /// The test server's latest timestamp, when timestamps are on.
    ts_recent: Option<u32>,
    /// How long to wait for another retransmitted FIN.
    quiet: u64,
    until: u64,
    cap: u64,
    /// The time of this record's live entry in the engine's timer wheel.
    pub timer_at: Option<u64>,
}

/// What a closing session hands over to its [`TimeWait`].
pub struct Closed {
    pub replay_client: Endpoint,
    pub target: Endpoint,
    pub client_isn: SeqNum,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub ts_recent: Option<u32>,
    pub quiet: u64,
}

impl TimeWait {
    pub fn new(closed: Closed, now: u64, timer_at: Option<u64>) -> Self {
        let Closed { replay_client, target, client_isn, seq, ack, ts_recent, quiet } = closed;
        Self {
            replay_client,
            target,
            client_isn,
            seq,
            ack,
            ts_recent,
            quiet,
            until: now + quiet,
            cap: now + CAP_US,
            timer_at,
        }
    }

    /// A reply of the test server: a retransmitted FIN is acknowledged again, and the linger
    /// lasts while it keeps asking (up to the cap). Anything else needs no answer.
    pub fn on_reply(&mut self, ctx: &mut Ctx<'_>, f: &ReplyFacts) {
        if f.flags & FIN == 0 || f.flags & RST != 0 {
            return;
        }
        let options = match self.ts_recent {
            Some(ts_recent) => Options::timestamps(ctx.ts_now(), ts_recent),
            None => Options::default(),
        };
        ctx.send(&emit::Segment {
            src: self.replay_client,
            dst: self.target,
            seq: self.seq,
            ack: self.ack,
            flags: ACK,
            window: OUR_WINDOW,
            options: options.as_bytes(),
            payload: &[],
        });
        self.until = (ctx.now + self.quiet).min(self.cap);
    }

    /// When the linger ends, unless another FIN comes.
    pub fn until(&self) -> u64 {
        self.until
    }
}
