//! TCP header fields and the options the replay cares about.

use crate::seq::SeqNum;

/// Byte offsets inside the TCP header.
pub mod offset {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// Flag bits (byte 13 of the header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Option kinds (RFC 9293, RFC 7323, RFC 2018).
pub mod kind {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const TIMESTAMPS: u8 = 8;
}

/// The options that matter to a replay, as found in one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    /// (TSval, TSecr)
    pub timestamps: Option<(u32, u32)>,
}

/// Malformed options: a length that runs past the header or is below 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadOptions;

impl TcpOptions {
    /// Parses the option bytes (the TCP header past its first 20 bytes). Unknown options are
    /// skipped by their length; known ones with the wrong length are ignored, as stacks do.
    pub fn parse(mut opts: &[u8]) -> Result<Self, BadOptions> {
        let mut out = Self::default();
        while let [k, rest @ ..] = opts {
            match *k {
                kind::END => break,
                kind::NOP => {
                    opts = rest;
                    continue;
                }
                _ => {}
            }
            let len = *rest.first().ok_or(BadOptions)? as usize;
            if len < 2 || len > opts.len() {
                return Err(BadOptions);
            }
            let body = &opts[2..len];
            match (*k, body.len()) {
                (kind::MSS, 2) => out.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                (kind::WINDOW_SCALE, 1) => out.window_scale = Some(body[0]),
                (kind::SACK_PERMITTED, 0) => out.sack_permitted = true,
                (kind::TIMESTAMPS, 8) => {
                    out.timestamps = Some((
                        u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    ))
                }
                _ => {}
            }
            opts = &opts[len..];
        }
        Ok(out)
    }
}

/// The fixed fields of a TCP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFields {
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: u8,
    pub window: u16,
}

impl TcpFields {
    /// Reads the fields from a header of at least 20 bytes.
    pub fn read(header: &[u8]) -> Option<Self> {
        let be32 = |o: usize| Some(u32::from_be_bytes(header.get(o..o + 4)?.try_into().ok()?));
        Some(Self {
            seq: SeqNum(be32(offset::SEQ)?),
            ack: SeqNum(be32(offset::ACK)?),
            flags: *header.get(offset::FLAGS)?,
            window: u16::from_be_bytes(header.get(offset::WINDOW..offset::WINDOW + 2)?.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_syn_options_parse() {
        // MSS 1460, SACK-permitted, timestamps, NOP, window scale 7: what Linux sends.
        let opts = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        let o = TcpOptions::parse(&opts).unwrap();
        assert_eq!(
            o,
            TcpOptions { mss: Some(1460), window_scale: Some(7), sack_permitted: true, timestamps: Some((1, 0)) }
        );
    }

    #[test]
    fn end_of_options_stops_and_unknown_options_are_skipped() {
        let opts = [30, 4, 0xaa, 0xbb, 3, 3, 2, 0, 2, 4, 1, 1];
        let o = TcpOptions::parse(&opts).unwrap();
        assert_eq!(o.window_scale, Some(2));
        assert_eq!(o.mss, None, "after END nothing counts");
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        assert_eq!(TcpOptions::parse(&[2]), Err(BadOptions));
        assert_eq!(TcpOptions::parse(&[2, 1]), Err(BadOptions));
        assert_eq!(TcpOptions::parse(&[2, 10, 0, 0]), Err(BadOptions));
        for len in 0..=255u8 {
            let _ = TcpOptions::parse(&[8, len, 1, 2, 3]);
        }
    }
}
