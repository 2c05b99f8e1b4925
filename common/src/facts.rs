//! What the intercept tells a copier about each reply of the test server: TCP/IP header facts,
//! and the payload's first bytes only where the copier asked for them (`--payload-bytes`).

use crate::{
    endpoint::Endpoint,
    parse::{parse_frame, Malformed},
    seq::SeqNum,
    tcp::{TcpFields, TcpOptions},
};

/// Which of the optional fields of [`ReplyFacts`] are present.
pub mod option_bits {
    pub const MSS: u8 = 1;
    pub const WINDOW_SCALE: u8 = 2;
    pub const SACK_PERMITTED: u8 = 4;
    pub const TIMESTAMPS: u8 = 8;
}

/// Where the intercept's XDP program writes a reply's arrival before the reply goes to its
/// AF_XDP socket: CLOCK_MONOTONIC microseconds (`u32`, native byte order, wrapping) over the
/// first bytes of the destination MAC address, which nothing reads past that program. The
/// socket's reader pauses between passes (`--coalesce-us`), and the copier's latency figures
/// must leave out how long a reply waited for it ([`ReplyFacts::age_us`]).
pub const ARRIVAL_STAMP: core::ops::Range<usize> = 0..4;

/// A reply's arrival stamp, as the intercept's XDP program wrote it ([`ARRIVAL_STAMP`]).
pub fn arrival_stamp(frame: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(frame.get(ARRIVAL_STAMP)?.try_into().ok()?))
}

/// Microseconds from a 32-bit stamp `at` to `now_us` on the same clock; 0 for a stamp from the
/// future or over a minute old (not a stamp: no age is better than a wrong one).
pub fn stamp_age_us(at: u32, now_us: u64) -> u32 {
    let age = (now_us as u32).wrapping_sub(at);
    if age > 60_000_000 {
        0
    } else {
        age
    }
}

/// One reply segment of the test server, reduced to what the copier's session engine needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyFacts {
    /// The reply's destination: the (copied) client.
    pub client: Endpoint,
    /// The reply's source: the test server.
    pub target: Endpoint,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub window: u16,
    pub flags: u8,
    /// `option_bits` of the options present.
    pub options: u8,
    pub payload_len: u16,
    pub mss: u16,
    pub window_scale: u8,
    pub _pad: [u8; 3],
    pub ts_val: u32,
    pub ts_ecr: u32,
    /// How long the intercept had the reply before it sent these facts on, microseconds: the
    /// copier's latency figures leave it out.
    pub age_us: u32,
}

impl ReplyFacts {
    /// The TCP options as found in the reply.
    pub fn tcp_options(&self) -> TcpOptions {
        let has = |bit| self.options & bit != 0;
        TcpOptions {
            mss: has(option_bits::MSS).then_some(self.mss),
            window_scale: has(option_bits::WINDOW_SCALE).then_some(self.window_scale),
            sack_permitted: has(option_bits::SACK_PERMITTED),
            timestamps: has(option_bits::TIMESTAMPS).then_some((self.ts_val, self.ts_ecr)),
        }
    }

    fn set_options(&mut self, o: TcpOptions) {
        if let Some(mss) = o.mss {
            self.options |= option_bits::MSS;
            self.mss = mss;
        }
        if let Some(ws) = o.window_scale {
            self.options |= option_bits::WINDOW_SCALE;
            self.window_scale = ws;
        }
        if o.sack_permitted {
            self.options |= option_bits::SACK_PERMITTED;
        }
        if let Some((val, ecr)) = o.timestamps {
            self.options |= option_bits::TIMESTAMPS;
            self.ts_val = val;
            self.ts_ecr = ecr;
        }
    }

    /// Reduces an Ethernet frame to its facts. `Ok(None)`: not a TCP segment.
    pub fn from_frame(frame: &[u8]) -> Result<Option<Self>, Malformed> {
        Ok(Self::with_payload(frame)?.map(|(facts, _)| facts))
    }

    /// [`Self::from_frame`], and where the segment's payload is in the frame.
    pub fn with_payload(frame: &[u8]) -> Result<Option<(Self, core::ops::Range<usize>)>, Malformed> {
        let Some(seg) = parse_frame(frame)? else { return Ok(None) };
        let header = &frame[seg.l4_offset..seg.l4_offset + seg.tcp_header_len];
        let fields = TcpFields::read(header).ok_or(Malformed::Truncated)?;
        let options = TcpOptions::parse(&header[20..]).map_err(|_| Malformed::BadTcpDataOffset)?;
        let payload_len = seg.l4_end - seg.l4_offset - seg.tcp_header_len;
        let mut facts = Self {
            client: seg.dst,
            target: seg.src,
            seq: fields.seq,
            ack: fields.ack,
            window: fields.window,
            flags: fields.flags,
            payload_len: u16::try_from(payload_len).map_err(|_| Malformed::BadIpLength)?,
            ..Self::default()
        };
        facts.set_options(options);
        Ok(Some((facts, seg.l4_offset + seg.tcp_header_len..seg.l4_end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::flags::{ACK, SYN};

    #[test]
    fn a_stamps_age_survives_the_32_bit_wrap_and_a_wrong_stamp_has_none() {
        assert_eq!(stamp_age_us(1_000, 1_250), 250);
        let now = (1u64 << 32) + 100; // the clock wrapped 32 bits since the stamp
        assert_eq!(stamp_age_us(u32::MAX - 49, now), 150);
        assert_eq!(stamp_age_us(2_000, 1_000), 0, "from the future");
        assert_eq!(stamp_age_us(0, 61_000_000), 0, "over a minute: not a stamp");
        let mut frame = vec![0u8; 14];
        frame[ARRIVAL_STAMP].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(arrival_stamp(&frame), Some(77));
        assert_eq!(arrival_stamp(&frame[..3]), None);
    }

    /// A SYN-ACK from 10.100.2.2:8080 to 10.100.1.2:40000 with Linux's options and 5 bytes of
    /// payload (a TCP Fast Open-less SYN-ACK never has payload, but the length logic is shared).
    fn reply() -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let opts = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9, 1, 3, 3, 7];
        let tcp_len = 20 + opts.len();
        let total = (20 + tcp_len + 5) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 100, 2, 2, 10, 100, 1, 2]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&8080u16.to_be_bytes());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&1000u32.to_be_bytes());
        f.extend_from_slice(&2001u32.to_be_bytes());
        f.extend_from_slice(&[((tcp_len / 4) as u8) << 4, SYN | ACK, 0xfe, 0x88, 0, 0, 0, 0]);
        f.extend_from_slice(&opts);
        f.extend_from_slice(b"hello");
        f
    }

    #[test]
    fn a_reply_becomes_its_facts() {
        let facts = ReplyFacts::from_frame(&reply()).unwrap().unwrap();
        assert_eq!(facts.client, Endpoint::v4([10, 100, 1, 2], 40000));
        assert_eq!(facts.target, Endpoint::v4([10, 100, 2, 2], 8080));
        assert_eq!((facts.seq, facts.ack), (SeqNum(1000), SeqNum(2001)));
        assert_eq!((facts.flags, facts.window, facts.payload_len), (SYN | ACK, 0xfe88, 5));
        let o = facts.tcp_options();
        assert_eq!((o.mss, o.window_scale, o.sack_permitted, o.timestamps), (Some(1460), Some(7), true, Some((7, 9))));
        let frame = reply();
        let (_, payload) = ReplyFacts::with_payload(&frame).unwrap().unwrap();
        assert_eq!(&frame[payload], b"hello");
    }

    #[test]
    fn absent_options_stay_absent() {
        let mut f = reply();
        // Replace the options with NOPs.
        for b in &mut f[54..74] {
            *b = 1;
        }
        let facts = ReplyFacts::from_frame(&f).unwrap().unwrap();
        assert_eq!(facts.tcp_options(), TcpOptions::default());
    }
}
