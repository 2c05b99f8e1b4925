//! The intercept ↔ copier protocol (docs/architecture.md §3), version 4.
//!
//! A TCP stream of frames: `length: u32` (of what follows), `kind: u8`, body. Every integer is
//! big-endian; nothing is `repr(C)` on the wire. Decoding borrows from the input and checks
//! every bound; encoding writes into a caller's buffer. Neither allocates.
//!
//! | kind | direction | body |
//! |---|---|---|
//! | HELLO 1 | copier → intercept, first | magic `XDPC`, version u16, instance u64, nonce 16 bytes |
//! | WELCOME 2 | intercept → copier | version u16, flags u8 (1: authenticates, 2: its host forwards IP, 4: holds early replies), nonce 16 bytes, proof 32 bytes |
//! | AUTH 9 | copier → intercept, after WELCOME | proof 32 bytes (zeros without a secret) |
//! | PING 10 | copier → intercept | empty: the copier is alive (idle connections are closed) |
//! | WANT_PAYLOAD 12 | copier → intercept, once, before OWN | bytes u32: the first bytes of each answer it wants (at most 65 536) |
//! | PAYLOAD_FACTS 13 | intercept → copier, instead of FACTS once payload is wanted | count u16, count × (66-byte record, length u16, that many bytes of the reply's payload) |
//! | SPACE 11 | copier → intercept, once, before OWN | count u16, count × (first address 16 bytes, last address 16 bytes): every client address it will announce |
//! | OWN 3 / DISOWN 4 | copier → intercept | count u16, count × (address 16 bytes, port u16); port 0 means every port of the address |
//! | FACTS 5 | intercept → copier | count u16, count × 66-byte records (the last 4 bytes: how long the intercept had the reply, µs) |
//! | BYE 6 | either, before closing | permanent u8 (1: retrying cannot help), UTF-8 reason |
//! | SYNC 7 | copier → intercept | token u64 |
//! | SYNCED 8 | intercept → copier | token u64: every OWN/DISOWN sent before the SYNC is in effect |
//! | SOLO 14 | copier → intercept, once, before OWN | empty: it can go without announcing while it is the intercept's only copier |
//! | SOLE 15 | intercept → copier that sent SOLO | sole u8 (1: it is the only copier: it announces nothing, and every stolen reply in its space is its; 0: it announces again, OWN for every endpoint it replays, then SYNC) |
//!
//! A copier that replays from addresses of its own (`-c`) declares them in SPACE, and the
//! intercept refuses any announcement outside them: a copier whose clients are the real ones
//! cannot know its space, and declares none.
//!
//! Payload is opt-in (`--payload-bytes`): the intercept sends the first bytes of each answer, an
//! answer being the replies between two changes of the test server's acknowledgement (a new
//! request), so the copier can compare answers with production's.
//!
//! SYNC exists so that a copier can hold a new session's SYN until the intercepts know the
//! session is its own: otherwise the SYN-ACK can arrive first and be dropped as unowned. An
//! intercept that holds early replies (WELCOME flag 4: on an assistant host, where every reply
//! is stolen) keeps a SYN-ACK nobody owns yet for a while and delivers it with the OWN that
//! claims it, so a copier sends its SYNs at once and needs no SYNC there.
//!
//! OWN and DISOWN cost a write per new session, and a wake-up of the intercept for each. An
//! assistant host with one copier has nobody else to route to: a copier that offers SOLO is
//! told SOLE 1 while it is alone there and announces nothing, and the intercept routes it every
//! reply in its space. When a second copier connects, SOLE 0 has the first announce what it
//! owns; until its SYNC shows that done, replies nobody owns still go to it.
//!
//! The secret never crosses the wire: each side proves it knows it by an HMAC over both nonces
//! (`crate::auth`), the intercept first, so a copier never authenticates to an impostor. The
//! instance is a copier process's random identity: its reconnection replaces its own stale
//! connection, while another copier's claim on the same endpoints is refused.

use core::fmt;

use crate::{endpoint::Endpoint, facts::ReplyFacts, seq::SeqNum};

pub const VERSION: u16 = 4;
pub const MAGIC: [u8; 4] = *b"XDPC";
/// The intercept's default listening port (tcpcopy's).
pub const DEFAULT_PORT: u16 = 36524;
/// Length prefix plus kind.
pub const HEADER_LEN: usize = 5;
/// Largest `length` accepted: a peer that sends more is closed.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
pub const NONCE_LEN: usize = 16;
pub const PROOF_LEN: usize = 32;
pub const MAX_REASON_LEN: usize = 1024;
pub const ENTRY_LEN: usize = 18;
pub const RANGE_LEN: usize = 32;
pub const RECORD_LEN: usize = 66;
/// Records that fit one FACTS frame.
pub const MAX_RECORDS: usize = (MAX_FRAME_LEN - 1 - 2) / RECORD_LEN;
/// Entries that fit one OWN/DISOWN frame.
pub const MAX_ENTRIES: usize = (MAX_FRAME_LEN - 1 - 2) / ENTRY_LEN;
/// Address ranges that fit one SPACE frame.
pub const MAX_RANGES: usize = (MAX_FRAME_LEN - 1 - 2) / RANGE_LEN;
/// The most payload a copier may want of each answer.
pub const MAX_PAYLOAD_WANTED: u32 = 65_536;
/// A PAYLOAD_FACTS item without its payload: the record and the payload's length.
pub const PAYLOAD_ITEM_LEN: usize = RECORD_LEN + 2;

/// Frame kinds.
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const OWN: u8 = 3;
    pub const DISOWN: u8 = 4;
    pub const FACTS: u8 = 5;
    pub const BYE: u8 = 6;
    pub const SYNC: u8 = 7;
    pub const SYNCED: u8 = 8;
    pub const AUTH: u8 = 9;
    pub const PING: u8 = 10;
    pub const SPACE: u8 = 11;
    pub const WANT_PAYLOAD: u8 = 12;
    pub const PAYLOAD_FACTS: u8 = 13;
    pub const SOLO: u8 = 14;
    pub const SOLE: u8 = 15;
}

/// Why a byte stream is not this protocol. Each closes the connection it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// A frame of length 0 (no kind).
    Empty,
    /// A frame longer than [`MAX_FRAME_LEN`].
    Oversize(u32),
    UnknownKind(u8),
    /// HELLO without the magic: not an xdpcopy peer.
    BadMagic,
    UnsupportedVersion(u16),
    /// A body shorter or longer than its own counts say.
    BadLength {
        kind: u8,
    },
    BadReason,
    /// The output buffer cannot hold the frame, or too many items for one frame.
    TooLarge,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => write!(f, "empty frame"),
            Self::Oversize(len) => write!(f, "frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit"),
            Self::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            Self::BadMagic => write!(f, "not an xdpcopy peer (bad magic)"),
            Self::UnsupportedVersion(v) => {
                write!(f, "protocol version {v} is not supported (this side speaks {VERSION})")
            }
            Self::BadLength { kind } => write!(f, "frame of kind {kind} has a body of the wrong length"),
            Self::BadReason => write!(f, "BYE reason is not UTF-8"),
            Self::TooLarge => write!(f, "frame does not fit the buffer or the frame size limit"),
        }
    }
}

impl core::error::Error for ProtoError {}

/// One decoded frame, borrowing from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Hello {
        instance: u64,
        nonce: [u8; NONCE_LEN],
    },
    Welcome {
        version: u16,
        authenticates: bool,
        /// The intercept's host forwards IP: replies it does not steal go on (to the real
        /// clients, if the routes lead there).
        forwarding: bool,
        /// It holds a SYN-ACK that arrives before the OWN of its client, and delivers it with
        /// that OWN: a copier need not wait for SYNCED before a SYN.
        holds_early: bool,
        nonce: [u8; NONCE_LEN],
        proof: [u8; PROOF_LEN],
    },
    Auth {
        proof: [u8; PROOF_LEN],
    },
    Ping,
    Space(Ranges<'a>),
    /// Bytes of each answer the copier wants.
    WantPayload(u32),
    PayloadFacts(PayloadRecords<'a>),
    Own(Entries<'a>),
    Disown(Entries<'a>),
    Facts(Records<'a>),
    /// `permanent`: the peer will refuse a retry as well (wrong secret, version, ownership).
    Bye {
        permanent: bool,
        reason: &'a str,
    },
    Sync(u64),
    Synced(u64),
    /// The copier can go without OWN/DISOWN while it is the intercept's only copier.
    Solo,
    /// `true`: the copier is the intercept's only one, and announces nothing; `false`: it
    /// announces again, everything it owns first, then a SYNC.
    Sole(bool),
}

/// The endpoints of an OWN/DISOWN frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entries<'a>(&'a [u8]);

impl Entries<'_> {
    pub fn len(&self) -> usize {
        self.0.len() / ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Iterator for Entries<'_> {
    type Item = Endpoint;

    fn next(&mut self) -> Option<Endpoint> {
        let (entry, rest) = self.0.split_at_checked(ENTRY_LEN)?;
        self.0 = rest;
        Some(read_endpoint(entry))
    }
}

/// The address ranges of a SPACE frame: (first, last), both included, 16-byte addresses
/// (IPv4 mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges<'a>(&'a [u8]);

impl Ranges<'_> {
    pub fn len(&self) -> usize {
        self.0.len() / RANGE_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Iterator for Ranges<'_> {
    type Item = ([u8; 16], [u8; 16]);

    fn next(&mut self) -> Option<Self::Item> {
        let (range, rest) = self.0.split_at_checked(RANGE_LEN)?;
        self.0 = rest;
        Some((range[..16].try_into().expect("16 bytes"), range[16..].try_into().expect("16 bytes")))
    }
}

/// The items of a PAYLOAD_FACTS frame: each reply's facts and the first bytes of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRecords<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl PayloadRecords<'_> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> Iterator for PayloadRecords<'a> {
    type Item = (ReplyFacts, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (item, rest) = self.bytes.split_at_checked(PAYLOAD_ITEM_LEN)?;
        let (payload, rest) = rest.split_at_checked(be16(item, RECORD_LEN) as usize)?;
        self.bytes = rest;
        self.count -= 1;
        Some((read_record(&item[..RECORD_LEN]), payload))
    }
}

/// Checks a PAYLOAD_FACTS body: exactly `count` items, each payload within its reply's length.
fn payload_records(body: &[u8]) -> Result<PayloadRecords<'_>, ProtoError> {
    let bad = ProtoError::BadLength { kind: kind::PAYLOAD_FACTS };
    let (count, mut rest) = body.split_at_checked(2).ok_or(bad)?;
    let count = be16(count, 0) as usize;
    let items = rest;
    for _ in 0..count {
        let (item, after) = rest.split_at_checked(PAYLOAD_ITEM_LEN).ok_or(bad)?;
        let len = be16(item, RECORD_LEN);
        if len > be16(item, 48) {
            return Err(bad); // more payload than the reply carried
        }
        rest = after.get(len as usize..).ok_or(bad)?;
    }
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok(PayloadRecords { count, bytes: items })
}

/// The records of a FACTS frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Records<'a>(&'a [u8]);

impl Records<'_> {
    pub fn len(&self) -> usize {
        self.0.len() / RECORD_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Iterator for Records<'_> {
    type Item = ReplyFacts;

    fn next(&mut self) -> Option<ReplyFacts> {
        let (record, rest) = self.0.split_at_checked(RECORD_LEN)?;
        self.0 = rest;
        Some(read_record(record))
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_endpoint(b: &[u8]) -> Endpoint {
    let mut addr = [0; 16];
    addr.copy_from_slice(&b[..16]);
    Endpoint::v6(addr, be16(b, 16))
}

fn write_endpoint(out: &mut [u8], e: &Endpoint) {
    out[..16].copy_from_slice(&e.addr);
    out[16..18].copy_from_slice(&e.port.to_be_bytes());
}

fn read_record(b: &[u8]) -> ReplyFacts {
    ReplyFacts {
        client: read_endpoint(&b[0..18]),
        target: read_endpoint(&b[18..36]),
        seq: SeqNum(be32(b, 36)),
        ack: SeqNum(be32(b, 40)),
        window: be16(b, 44),
        flags: b[46],
        options: b[47],
        payload_len: be16(b, 48),
        mss: be16(b, 50),
        window_scale: b[52],
        _pad: [0; 3],
        ts_val: be32(b, 54),
        ts_ecr: be32(b, 58),
        age_us: be32(b, 62),
    }
}

fn write_record(out: &mut [u8], r: &ReplyFacts) {
    write_endpoint(&mut out[0..18], &r.client);
    write_endpoint(&mut out[18..36], &r.target);
    out[36..40].copy_from_slice(&r.seq.0.to_be_bytes());
    out[40..44].copy_from_slice(&r.ack.0.to_be_bytes());
    out[44..46].copy_from_slice(&r.window.to_be_bytes());
    out[46] = r.flags;
    out[47] = r.options;
    out[48..50].copy_from_slice(&r.payload_len.to_be_bytes());
    out[50..52].copy_from_slice(&r.mss.to_be_bytes());
    out[52] = r.window_scale;
    out[53] = 0;
    out[54..58].copy_from_slice(&r.ts_val.to_be_bytes());
    out[58..62].copy_from_slice(&r.ts_ecr.to_be_bytes());
    out[62..66].copy_from_slice(&r.age_us.to_be_bytes());
}

/// A counted list body: `count: u16`, then exactly `count × item_len` bytes.
fn counted(kind: u8, body: &[u8], item_len: usize) -> Result<&[u8], ProtoError> {
    let bad = ProtoError::BadLength { kind };
    let (count, items) = body.split_at_checked(2).ok_or(bad)?;
    if items.len() != be16(count, 0) as usize * item_len {
        return Err(bad);
    }
    Ok(items)
}

/// Decodes the frame at the start of `buf`.
///
/// `Ok(None)`: `buf` holds only part of a frame; read more. `Ok(Some((message, n)))`: the
/// frame took `n` bytes. An error means the peer does not speak this protocol (or this version).
pub fn decode(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, ProtoError> {
    let Some(len) = buf.get(..4).map(|b| be32(b, 0)) else { return Ok(None) };
    if len == 0 {
        return Err(ProtoError::Empty);
    }
    if len as usize > MAX_FRAME_LEN {
        return Err(ProtoError::Oversize(len));
    }
    let Some(frame) = buf.get(4..4 + len as usize) else { return Ok(None) };
    let (kind, body) = (frame[0], &frame[1..]);
    let bad = ProtoError::BadLength { kind };
    let message = match kind {
        kind::HELLO => {
            // The magic and version first: an older or foreign peer is told what is wrong.
            if body.len() < 6 {
                return Err(bad);
            }
            if body[..4] != MAGIC {
                return Err(ProtoError::BadMagic);
            }
            let version = be16(body, 4);
            if version != VERSION {
                return Err(ProtoError::UnsupportedVersion(version));
            }
            let rest: &[u8; 8 + NONCE_LEN] = body[6..].try_into().map_err(|_| bad)?;
            let instance = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            Message::Hello { instance, nonce: rest[8..].try_into().expect("nonce length") }
        }
        kind::WELCOME => {
            let b: &[u8; 3 + NONCE_LEN + PROOF_LEN] = body.try_into().map_err(|_| bad)?;
            let version = be16(b, 0);
            if version != VERSION {
                return Err(ProtoError::UnsupportedVersion(version));
            }
            if b[2] & !0b111 != 0 {
                return Err(bad);
            }
            let (authenticates, forwarding, holds_early) = (b[2] & 1 != 0, b[2] & 2 != 0, b[2] & 4 != 0);
            let nonce = b[3..3 + NONCE_LEN].try_into().expect("nonce length");
            Message::Welcome {
                version,
                authenticates,
                forwarding,
                holds_early,
                nonce,
                proof: b[3 + NONCE_LEN..].try_into().expect("proof length"),
            }
        }
        kind::AUTH => Message::Auth { proof: body.try_into().map_err(|_| bad)? },
        kind::PING if body.is_empty() => Message::Ping,
        kind::PING => return Err(bad),
        kind::SPACE => {
            let ranges = Ranges(counted(kind, body, RANGE_LEN)?);
            if ranges.is_empty() || { ranges }.any(|(first, last)| first > last) {
                return Err(bad);
            }
            Message::Space(ranges)
        }
        kind::WANT_PAYLOAD => {
            let bytes = u32::from_be_bytes(body.try_into().map_err(|_| bad)?);
            if bytes > MAX_PAYLOAD_WANTED {
                return Err(bad);
            }
            Message::WantPayload(bytes)
        }
        kind::PAYLOAD_FACTS => Message::PayloadFacts(payload_records(body)?),
        kind::OWN => Message::Own(Entries(counted(kind, body, ENTRY_LEN)?)),
        kind::DISOWN => Message::Disown(Entries(counted(kind, body, ENTRY_LEN)?)),
        kind::FACTS => Message::Facts(Records(counted(kind, body, RECORD_LEN)?)),
        kind::BYE => {
            let text = |b| core::str::from_utf8(b).map_err(|_| ProtoError::BadReason);
            match body.split_first() {
                Some((&flag @ (0 | 1), reason)) => Message::Bye { permanent: flag == 1, reason: text(reason)? },
                // A version 1 peer's BYE is its reason alone: it refused us, and will again.
                _ => Message::Bye { permanent: true, reason: text(body)? },
            }
        }
        kind::SYNC | kind::SYNCED => {
            let token = u64::from_be_bytes(body.try_into().map_err(|_| bad)?);
            if kind == kind::SYNC {
                Message::Sync(token)
            } else {
                Message::Synced(token)
            }
        }
        kind::SOLO if body.is_empty() => Message::Solo,
        kind::SOLO => return Err(bad),
        kind::SOLE => match body {
            [flag @ (0 | 1)] => Message::Sole(*flag == 1),
            _ => return Err(bad),
        },
        other => return Err(ProtoError::UnknownKind(other)),
    };
    Ok(Some((message, 4 + len as usize)))
}

/// Writes a frame of `kind` with a `body_len`-byte body filled by `fill`; returns its length.
fn frame(out: &mut [u8], kind: u8, body_len: usize, fill: impl FnOnce(&mut [u8])) -> Result<usize, ProtoError> {
    let len = 1 + body_len;
    if len > MAX_FRAME_LEN || out.len() < 4 + len {
        return Err(ProtoError::TooLarge);
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    out[4] = kind;
    fill(&mut out[HEADER_LEN..4 + len]);
    Ok(4 + len)
}

pub fn encode_hello(out: &mut [u8], instance: u64, nonce: &[u8; NONCE_LEN]) -> Result<usize, ProtoError> {
    frame(out, kind::HELLO, 14 + NONCE_LEN, |b| {
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_be_bytes());
        b[6..14].copy_from_slice(&instance.to_be_bytes());
        b[14..].copy_from_slice(nonce);
    })
}

/// What an intercept says of itself in WELCOME (see [`Message::Welcome`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traits {
    pub authenticates: bool,
    pub forwarding: bool,
    pub holds_early: bool,
}

/// WELCOME: what this intercept is ([`Traits`]), its nonce, and its proof that it knows the
/// secret (zeros when it has none).
pub fn encode_welcome(
    out: &mut [u8],
    traits: Traits,
    nonce: &[u8; NONCE_LEN],
    proof: &[u8; PROOF_LEN],
) -> Result<usize, ProtoError> {
    frame(out, kind::WELCOME, 3 + NONCE_LEN + PROOF_LEN, |b| {
        b[..2].copy_from_slice(&VERSION.to_be_bytes());
        b[2] = u8::from(traits.authenticates) | u8::from(traits.forwarding) << 1 | u8::from(traits.holds_early) << 2;
        b[3..3 + NONCE_LEN].copy_from_slice(nonce);
        b[3 + NONCE_LEN..].copy_from_slice(proof);
    })
}

pub fn encode_auth(out: &mut [u8], proof: &[u8; PROOF_LEN]) -> Result<usize, ProtoError> {
    frame(out, kind::AUTH, PROOF_LEN, |b| b.copy_from_slice(proof))
}

pub fn encode_ping(out: &mut [u8]) -> Result<usize, ProtoError> {
    frame(out, kind::PING, 0, |_| {})
}

/// OWN (`own = true`) or DISOWN for at most [`MAX_ENTRIES`] endpoints.
pub fn encode_endpoints(out: &mut [u8], own: bool, entries: &[Endpoint]) -> Result<usize, ProtoError> {
    if entries.len() > MAX_ENTRIES {
        return Err(ProtoError::TooLarge);
    }
    let kind = if own { kind::OWN } else { kind::DISOWN };
    frame(out, kind, 2 + entries.len() * ENTRY_LEN, |b| {
        b[..2].copy_from_slice(&(entries.len() as u16).to_be_bytes());
        for (chunk, e) in b[2..].chunks_exact_mut(ENTRY_LEN).zip(entries) {
            write_endpoint(chunk, e);
        }
    })
}

/// SPACE: 1 to [`MAX_RANGES`] ranges of client addresses, each (first, last) with first ≤ last.
pub fn encode_space(out: &mut [u8], ranges: &[([u8; 16], [u8; 16])]) -> Result<usize, ProtoError> {
    if ranges.is_empty() || ranges.len() > MAX_RANGES || ranges.iter().any(|(first, last)| first > last) {
        return Err(ProtoError::TooLarge);
    }
    frame(out, kind::SPACE, 2 + ranges.len() * RANGE_LEN, |b| {
        b[..2].copy_from_slice(&(ranges.len() as u16).to_be_bytes());
        for (chunk, (first, last)) in b[2..].chunks_exact_mut(RANGE_LEN).zip(ranges) {
            chunk[..16].copy_from_slice(first);
            chunk[16..].copy_from_slice(last);
        }
    })
}

/// WANT_PAYLOAD: the first `bytes` of each answer (at most [`MAX_PAYLOAD_WANTED`]).
pub fn encode_want_payload(out: &mut [u8], bytes: u32) -> Result<usize, ProtoError> {
    if bytes > MAX_PAYLOAD_WANTED {
        return Err(ProtoError::TooLarge);
    }
    frame(out, kind::WANT_PAYLOAD, 4, |b| b.copy_from_slice(&bytes.to_be_bytes()))
}

/// The body length of a PAYLOAD_FACTS frame of `items`.
pub fn payload_facts_len<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> usize {
    2 + items.into_iter().map(|p| PAYLOAD_ITEM_LEN + p.len()).sum::<usize>()
}

/// PAYLOAD_FACTS for `items`, which must fit one frame ([`payload_facts_len`] + 1 ≤
/// [`MAX_FRAME_LEN`]); each payload at most its reply's `payload_len`.
pub fn encode_payload_facts(out: &mut [u8], items: &[(ReplyFacts, &[u8])]) -> Result<usize, ProtoError> {
    if items.len() > u16::MAX as usize || items.iter().any(|(f, p)| p.len() > f.payload_len as usize) {
        return Err(ProtoError::TooLarge);
    }
    let len = payload_facts_len(items.iter().map(|(_, p)| *p));
    frame(out, kind::PAYLOAD_FACTS, len, |b| {
        b[..2].copy_from_slice(&(items.len() as u16).to_be_bytes());
        let mut at = 2;
        for (f, payload) in items {
            write_record(&mut b[at..at + RECORD_LEN], f);
            b[at + RECORD_LEN..at + PAYLOAD_ITEM_LEN].copy_from_slice(&(payload.len() as u16).to_be_bytes());
            at += PAYLOAD_ITEM_LEN;
            b[at..at + payload.len()].copy_from_slice(payload);
            at += payload.len();
        }
    })
}

/// FACTS for at most [`MAX_RECORDS`] replies.
pub fn encode_facts(out: &mut [u8], records: &[ReplyFacts]) -> Result<usize, ProtoError> {
    if records.len() > MAX_RECORDS {
        return Err(ProtoError::TooLarge);
    }
    frame(out, kind::FACTS, 2 + records.len() * RECORD_LEN, |b| {
        b[..2].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (chunk, r) in b[2..].chunks_exact_mut(RECORD_LEN).zip(records) {
            write_record(chunk, r);
        }
    })
}

/// SYNC (`reply = false`) or SYNCED with `token`.
pub fn encode_sync(out: &mut [u8], reply: bool, token: u64) -> Result<usize, ProtoError> {
    frame(out, if reply { kind::SYNCED } else { kind::SYNC }, 8, |b| b.copy_from_slice(&token.to_be_bytes()))
}

pub fn encode_solo(out: &mut [u8]) -> Result<usize, ProtoError> {
    frame(out, kind::SOLO, 0, |_| {})
}

pub fn encode_sole(out: &mut [u8], sole: bool) -> Result<usize, ProtoError> {
    frame(out, kind::SOLE, 1, |b| b[0] = u8::from(sole))
}

/// BYE with `reason`, cut to [`MAX_REASON_LEN`] bytes at a character boundary.
pub fn encode_bye(out: &mut [u8], permanent: bool, reason: &str) -> Result<usize, ProtoError> {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    frame(out, kind::BYE, 1 + reason.len(), |b| {
        b[0] = u8::from(permanent);
        b[1..].copy_from_slice(reason);
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn roundtrip(encoded: &[u8]) -> Message<'_> {
        let (message, used) = decode(encoded).unwrap().unwrap();
        assert_eq!(used, encoded.len());
        message
    }

    #[test]
    fn the_handshake_carries_instance_nonces_and_proofs_never_a_secret() {
        let mut buf = [0; 128];
        let n = encode_hello(&mut buf, 0xfeed, &[7; NONCE_LEN]).unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::Hello { instance: 0xfeed, nonce: [7; NONCE_LEN] });
        assert_eq!(&buf[..4], &(n as u32 - 4).to_be_bytes(), "length prefix is big-endian");
        let traits = Traits { authenticates: true, ..Traits::default() };
        let n = encode_welcome(&mut buf, traits, &[1; NONCE_LEN], &[2; PROOF_LEN]).unwrap();
        assert_eq!(
            roundtrip(&buf[..n]),
            Message::Welcome {
                version: VERSION,
                authenticates: true,
                forwarding: false,
                holds_early: false,
                nonce: [1; NONCE_LEN],
                proof: [2; PROOF_LEN]
            }
        );
        let traits = Traits { forwarding: true, ..Traits::default() };
        let n = encode_welcome(&mut buf, traits, &[1; NONCE_LEN], &[0; PROOF_LEN]).unwrap();
        assert!(matches!(
            roundtrip(&buf[..n]),
            Message::Welcome { authenticates: false, forwarding: true, holds_early: false, .. }
        ));
        let traits = Traits { holds_early: true, ..Traits::default() };
        let n = encode_welcome(&mut buf, traits, &[1; NONCE_LEN], &[0; PROOF_LEN]).unwrap();
        assert!(matches!(
            roundtrip(&buf[..n]),
            Message::Welcome { authenticates: false, forwarding: false, holds_early: true, .. }
        ));
        buf[7] = 8; // an unknown flag
        assert_eq!(decode(&buf[..n]), Err(ProtoError::BadLength { kind: kind::WELCOME }));
        let n = encode_auth(&mut buf, &[3; PROOF_LEN]).unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::Auth { proof: [3; PROOF_LEN] });
        let n = encode_ping(&mut buf).unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::Ping);
        assert_eq!(decode(&[0, 0, 0, 2, kind::PING, 0]), Err(ProtoError::BadLength { kind: kind::PING }));
    }

    #[test]
    fn wrong_magic_and_wrong_version_are_refused() {
        let mut buf = [0; 64];
        let n = encode_hello(&mut buf, 1, &[0; NONCE_LEN]).unwrap();
        let mut bad = buf;
        bad[5] = b'Y';
        assert_eq!(decode(&bad[..n]), Err(ProtoError::BadMagic));
        // A version 1 HELLO (secret length, secret) is told its version, not that it is garbage.
        let v1 = [0, 0, 0, 11, kind::HELLO, b'X', b'D', b'P', b'C', 0, 1, 0, 2, b'h', b'i'];
        assert_eq!(decode(&v1), Err(ProtoError::UnsupportedVersion(1)));
    }

    #[test]
    fn own_and_disown_list_endpoints() {
        let entries = [Endpoint::v4([10, 0, 0, 1], 40000), Endpoint::v4([10, 0, 0, 2], 0)];
        let mut buf = [0; 128];
        let n = encode_endpoints(&mut buf, true, &entries).unwrap();
        let Message::Own(got) = roundtrip(&buf[..n]) else { panic!("not OWN") };
        assert_eq!(got.len(), 2);
        assert!(got.eq(entries.iter().copied()));
        let n = encode_endpoints(&mut buf, false, &entries[..1]).unwrap();
        assert!(matches!(roundtrip(&buf[..n]), Message::Disown(e) if e.len() == 1));
    }

    #[test]
    fn space_lists_address_ranges_first_to_last() {
        let v4 = |a: [u8; 4]| Endpoint::v4(a, 0).addr;
        let ranges = [(v4([10, 9, 0, 1]), v4([10, 9, 0, 254])), ([0xfd; 16], [0xfd; 16])];
        let mut buf = [0; 128];
        let n = encode_space(&mut buf, &ranges).unwrap();
        let Message::Space(got) = roundtrip(&buf[..n]) else { panic!("not SPACE") };
        assert!(got.eq(ranges.iter().copied()));
        // Reversed, or empty: a copier that declares a space declares some.
        buf[HEADER_LEN + 2..HEADER_LEN + 18].copy_from_slice(&v4([10, 9, 1, 0]));
        assert_eq!(decode(&buf[..n]), Err(ProtoError::BadLength { kind: kind::SPACE }));
        assert_eq!(decode(&[0, 0, 0, 3, kind::SPACE, 0, 0]), Err(ProtoError::BadLength { kind: kind::SPACE }));
        assert_eq!(encode_space(&mut buf, &[]), Err(ProtoError::TooLarge));
        assert_eq!(encode_space(&mut buf, &[(ranges[0].1, ranges[0].0)]), Err(ProtoError::TooLarge));
    }

    #[test]
    fn payload_is_wanted_then_sent_with_its_facts() {
        let mut buf = [0; 512];
        let n = encode_want_payload(&mut buf, 4096).unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::WantPayload(4096));
        assert_eq!(encode_want_payload(&mut buf, MAX_PAYLOAD_WANTED + 1), Err(ProtoError::TooLarge));
        let with = |len| ReplyFacts { payload_len: len, ..ReplyFacts::default() };
        let items = [(with(1400), &b"HTTP/1.1 200 OK"[..]), (with(0), &b""[..]), (with(3), &b"abc"[..])];
        let n = encode_payload_facts(&mut buf, &items).unwrap();
        let Message::PayloadFacts(got) = roundtrip(&buf[..n]) else { panic!("not PAYLOAD_FACTS") };
        assert_eq!(got.len(), 3);
        assert!(got.eq(items.iter().copied()));
        // More payload than the reply had, or a count that does not match the items.
        assert_eq!(encode_payload_facts(&mut buf, &[(with(2), &b"abc"[..])]), Err(ProtoError::TooLarge));
        let mut bad = buf;
        bad[HEADER_LEN + 1] = 4;
        assert_eq!(decode(&bad[..n]), Err(ProtoError::BadLength { kind: kind::PAYLOAD_FACTS }));
    }

    #[test]
    fn sync_and_synced_carry_their_token() {
        let mut buf = [0; 16];
        let n = encode_sync(&mut buf, false, 7).unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::Sync(7));
        let n = encode_sync(&mut buf, true, u64::MAX).unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::Synced(u64::MAX));
        assert_eq!(decode(&[0, 0, 0, 3, kind::SYNC, 0, 0]), Err(ProtoError::BadLength { kind: kind::SYNC }));
    }

    #[test]
    fn solo_is_offered_and_sole_granted_or_taken_back() {
        let mut buf = [0; 16];
        let n = encode_solo(&mut buf).unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::Solo);
        assert_eq!(decode(&[0, 0, 0, 2, kind::SOLO, 0]), Err(ProtoError::BadLength { kind: kind::SOLO }));
        for sole in [true, false] {
            let n = encode_sole(&mut buf, sole).unwrap();
            assert_eq!(roundtrip(&buf[..n]), Message::Sole(sole));
        }
        for body in [&[][..], &[2], &[1, 0]] {
            let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            frame.push(kind::SOLE);
            frame.extend_from_slice(body);
            assert_eq!(decode(&frame), Err(ProtoError::BadLength { kind: kind::SOLE }), "{body:?}");
        }
    }

    #[test]
    fn oversize_empty_and_unknown_frames_are_errors() {
        assert_eq!(
            decode(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes()),
            Err(ProtoError::Oversize(MAX_FRAME_LEN as u32 + 1))
        );
        assert_eq!(decode(&[0, 0, 0, 0]), Err(ProtoError::Empty));
        assert_eq!(decode(&[0, 0, 0, 1, 99]), Err(ProtoError::UnknownKind(99)));
        assert_eq!(decode(&[0, 0, 0, 1, 16]), Err(ProtoError::UnknownKind(16)));
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(ProtoError::Oversize(u32::from_be_bytes(*b"GET "))));
    }

    #[test]
    fn counts_must_match_bodies() {
        // FACTS claiming 2 records but carrying 1.
        let mut buf = [0; 256];
        let n = encode_facts(&mut buf, &[ReplyFacts::default()]).unwrap();
        buf[5..7].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(decode(&buf[..n]), Err(ProtoError::BadLength { kind: kind::FACTS }));
    }

    #[test]
    fn encoders_refuse_what_does_not_fit() {
        let mut small = [0; 8];
        assert_eq!(encode_hello(&mut small, 1, &[0; NONCE_LEN]), Err(ProtoError::TooLarge));
        let too_many = [ReplyFacts::default(); MAX_RECORDS + 1];
        let mut big = vec![0; 2 * MAX_FRAME_LEN];
        assert_eq!(encode_facts(&mut big, &too_many), Err(ProtoError::TooLarge));
        assert!(encode_facts(&mut big, &too_many[..MAX_RECORDS]).is_ok());
    }

    #[test]
    fn bye_reason_is_cut_at_a_character_boundary() {
        let mut buf = vec![0; 2048];
        let long = "é".repeat(MAX_REASON_LEN); // 2 bytes each
        let n = encode_bye(&mut buf, true, &long).unwrap();
        let Message::Bye { permanent: true, reason } = roundtrip(&buf[..n]) else { panic!("not a permanent BYE") };
        assert_eq!(reason.len(), MAX_REASON_LEN);
        let n = encode_bye(&mut buf, false, "busy").unwrap();
        assert_eq!(roundtrip(&buf[..n]), Message::Bye { permanent: false, reason: "busy" });
        let v1 = [0, 0, 0, 5, kind::BYE, b'n', b'o', b'p', b'e'];
        assert_eq!(roundtrip(&v1), Message::Bye { permanent: true, reason: "nope" }, "a version 1 BYE");
    }

    fn any_facts() -> impl Strategy<Value = ReplyFacts> {
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<(u32, u32, u16, u8, u8)>(),
            any::<(u16, u16, u8, u32, u32)>(),
            any::<u32>(),
        )
            .prop_map(
                |(
                    ca,
                    cp,
                    ta,
                    tp,
                    (seq, ack, window, flags, options),
                    (payload_len, mss, window_scale, ts_val, ts_ecr),
                    age_us,
                )| ReplyFacts {
                    client: Endpoint::v6(ca, cp),
                    target: Endpoint::v6(ta, tp),
                    seq: SeqNum(seq),
                    ack: SeqNum(ack),
                    window,
                    flags,
                    options,
                    payload_len,
                    mss,
                    window_scale,
                    _pad: [0; 3],
                    ts_val,
                    ts_ecr,
                    age_us,
                },
            )
    }

    proptest! {
        #[test]
        fn facts_roundtrip(records in proptest::collection::vec(any_facts(), 0..200)) {
            let mut buf = vec![0; MAX_FRAME_LEN + 4];
            let n = encode_facts(&mut buf, &records).unwrap();
            let Message::Facts(got) = roundtrip(&buf[..n]) else { panic!("not FACTS") };
            prop_assert!(got.eq(records.iter().copied()));
        }

        #[test]
        fn every_prefix_of_a_frame_asks_for_more(records in proptest::collection::vec(any_facts(), 0..4), cut in 0usize..300) {
            let mut buf = vec![0; 1024];
            let n = encode_facts(&mut buf, &records).unwrap();
            prop_assume!(cut < n);
            prop_assert_eq!(decode(&buf[..cut]), Ok(None));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut rest = &bytes[..];
            // Decode frame after frame until an error or the need for more bytes.
            while let Ok(Some((_, used))) = decode(rest) {
                prop_assert!(used >= HEADER_LEN && used <= rest.len());
                rest = &rest[used..];
            }
        }

        #[test]
        fn frames_split_anywhere_decode_the_same(entries in proptest::collection::vec((any::<[u8; 16]>(), any::<u16>()), 0..50), split in 0usize..2000) {
            let entries: Vec<Endpoint> = entries.into_iter().map(|(a, p)| Endpoint::v6(a, p)).collect();
            let mut stream = vec![0; 4096];
            let mut n = encode_hello(&mut stream, 9, &[5; NONCE_LEN]).unwrap();
            n += encode_endpoints(&mut stream[n..], true, &entries).unwrap();
            let stream = &stream[..n];
            // A reader that got the stream in two pieces sees the same frames.
            let split = split % (n + 1);
            let mut buf = stream[..split].to_vec();
            let mut decoded = Vec::new();
            let mut fed = split;
            loop {
                match decode(&buf).unwrap() {
                    Some((m, used)) => {
                        decoded.push(format!("{m:?}"));
                        buf.drain(..used);
                    }
                    None if fed < n => {
                        buf.extend_from_slice(&stream[fed..]);
                        fed = n;
                    }
                    None => break,
                }
            }
            prop_assert_eq!(decoded.len(), 2);
            prop_assert!(decoded[1].contains("Own"));
        }
    }
}
