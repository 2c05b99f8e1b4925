//! The captured client byte stream of one session, reassembled from segments that may arrive
//! duplicated or out of order, and released as the test server acknowledges it.
//!
//! Offsets are relative to the first data byte (client ISN + 1).

use std::collections::{BTreeMap, VecDeque};

/// Out-of-order bytes held per session before later ones are dropped (the capture's own
/// retransmissions fill holes).
pub const MAX_OUT_OF_ORDER: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Stream {
    /// Offset of `data[0]`: everything before it was acknowledged by the test server.
    base: u32,
    data: VecDeque<u8>,
    /// Captured beyond a hole, by offset.
    ahead: BTreeMap<u32, Vec<u8>>,
    ahead_bytes: usize,
}

impl Stream {
    /// End of the contiguous captured bytes.
    pub fn end(&self) -> u32 {
        self.base + self.data.len() as u32
    }

    #[cfg(test)]
    pub fn base(&self) -> u32 {
        self.base
    }

    /// Bytes held, for the engine's memory bound.
    pub fn buffered(&self) -> usize {
        self.data.len() + self.ahead_bytes
    }

    /// Adds captured bytes at `offset`; returns how many were new.
    pub fn insert(&mut self, offset: u32, bytes: &[u8]) -> usize {
        let end = self.end();
        let (offset, bytes) = match end.checked_sub(offset) {
            // Starts at or before our end: keep only the part past it.
            Some(overlap) => match bytes.get(overlap as usize..) {
                Some(rest) if !rest.is_empty() => (end, rest),
                _ => return 0,
            },
            None => (offset, bytes),
        };
        if offset > end {
            if self.ahead_bytes + bytes.len() > MAX_OUT_OF_ORDER {
                return 0;
            }
            let slot = self.ahead.entry(offset).or_default();
            if slot.len() >= bytes.len() {
                return 0;
            }
            self.ahead_bytes += bytes.len() - slot.len();
            *slot = bytes.to_vec();
            return bytes.len();
        }
        let before = self.data.len();
        self.data.extend(bytes);
        // Pull in whatever the new bytes made contiguous.
        while let Some((&at, _)) = self.ahead.first_key_value() {
            if at > self.end() {
                break;
            }
            let chunk = self.ahead.remove(&at).expect("present");
            self.ahead_bytes -= chunk.len();
            let skip = (self.end() - at) as usize;
            if let Some(rest) = chunk.get(skip..) {
                self.data.extend(rest);
            }
        }
        self.data.len() - before
    }

    /// Drops everything before `offset` (acknowledged by the test server).
    pub fn release(&mut self, offset: u32) {
        let n = offset.saturating_sub(self.base).min(self.data.len() as u32);
        self.data.drain(..n as usize);
        self.base += n;
    }

    /// Appends `len` bytes from `offset` to `out`.
    pub fn copy_to(&self, offset: u32, len: usize, out: &mut Vec<u8>) {
        let from = (offset - self.base) as usize;
        let (a, b) = self.data.as_slices();
        let end = from + len;
        if from < a.len() {
            out.extend_from_slice(&a[from..end.min(a.len())]);
        }
        if end > a.len() {
            out.extend_from_slice(&b[from.saturating_sub(a.len())..end - a.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(s: &Stream) -> Vec<u8> {
        let mut v = Vec::new();
        s.copy_to(s.base(), (s.end() - s.base()) as usize, &mut v);
        v
    }

    #[test]
    fn in_order_duplicates_and_overlaps_yield_each_byte_once() {
        let mut s = Stream::default();
        assert_eq!(s.insert(0, b"hello "), 6);
        assert_eq!(s.insert(0, b"hello "), 0, "duplicate");
        assert_eq!(s.insert(3, b"lo world"), 5, "overlap");
        assert_eq!(contents(&s), b"hello world");
    }

    #[test]
    fn holes_are_filled_later() {
        let mut s = Stream::default();
        s.insert(6, b"world");
        s.insert(12, b"!");
        assert_eq!(s.end(), 0);
        s.insert(0, b"hello ");
        assert_eq!(s.end(), 11, "stops at the next hole");
        s.insert(11, b"?");
        assert_eq!(contents(&s), b"hello world?!");
        assert_eq!(s.buffered(), 13);
    }

    #[test]
    fn released_bytes_are_freed() {
        let mut s = Stream::default();
        s.insert(0, b"abcdef");
        s.release(4);
        assert_eq!((s.base(), s.buffered()), (4, 2));
        let mut v = Vec::new();
        s.copy_to(4, 2, &mut v);
        assert_eq!(v, b"ef");
        s.release(100);
        assert_eq!(s.base(), 6, "never past the captured end");
    }

    #[test]
    fn out_of_order_bytes_are_bounded() {
        let mut s = Stream::default();
        assert_eq!(s.insert(10, &vec![0; MAX_OUT_OF_ORDER]), MAX_OUT_OF_ORDER);
        assert_eq!(s.insert(MAX_OUT_OF_ORDER as u32 + 20, b"x"), 0);
    }
}
