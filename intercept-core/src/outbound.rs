//! What a copier's connection has not taken yet.
//!
//! The AF_XDP workers write each batch's facts straight into the owning copier's socket,
//! without waiting: handing every batch to the server's thread first cost that thread a wake-up
//! per batch. What the socket does not take at once waits here, bounded, until the server sees
//! the socket writable again. Only whole frames are refused, never parts of one, so the stream
//! always stays parseable; the bound is what a slow copier can make us hold.

use std::io;

/// The outcome of [`Outbound::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// All of it is in the socket.
    Written,
    /// Some or all of it waits here: whoever flushes must be told.
    Queued,
    /// Refused whole: too much waits already, or the connection broke.
    Dropped,
}

#[derive(Debug)]
pub struct Outbound {
    bytes: Vec<u8>,
    limit: usize,
    broken: bool,
}

impl Outbound {
    /// Holds at most `limit` bytes beyond what the socket took.
    pub fn new(limit: usize) -> Self {
        Self { bytes: Vec::new(), limit, broken: false }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The connection failed a write: nothing more goes out on it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends `frame` behind whatever waits, writing through `write` (non-blocking) when nothing
    /// does, so frames keep their order.
    pub fn send(&mut self, frame: &[u8], write: impl FnOnce(&[u8]) -> io::Result<usize>) -> Sent {
        if self.broken {
            return Sent::Dropped;
        }
        if !self.bytes.is_empty() {
            if self.bytes.len() + frame.len() > self.limit {
                return Sent::Dropped;
            }
            self.bytes.extend_from_slice(frame);
            return Sent::Queued;
        }
        let taken = match write(frame) {
            Ok(n) => n.min(frame.len()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.broken = true;
                return Sent::Dropped;
            }
        };
        if taken == frame.len() {
            return Sent::Written;
        }
        self.bytes.extend_from_slice(&frame[taken..]);
        Sent::Queued
    }

    /// Writes what waits until the socket would block (`WouldBlock`), fails, or all is out.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8]) -> io::Result<usize>) -> io::Result<()> {
        while !self.bytes.is_empty() {
            let result = match write(&self.bytes) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                other => other,
            };
            match result {
                Ok(n) => drop(self.bytes.drain(..n.min(self.bytes.len()))),
                Err(err) => {
                    if err.kind() != io::ErrorKind::WouldBlock {
                        self.broken = true;
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` more bytes, then would block.
    struct Socket {
        taken: Vec<u8>,
        room: usize,
    }

    impl Socket {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room);
            self.taken.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_socket_with_room_takes_frames_directly() {
        let (mut out, mut s) = (Outbound::new(100), Socket { taken: Vec::new(), room: 1000 });
        assert_eq!(out.send(b"abc", |b| s.write(b)), Sent::Written);
        assert!(out.is_empty());
        assert_eq!(s.taken, b"abc");
    }

    #[test]
    fn what_the_socket_does_not_take_waits_in_order_and_goes_when_it_has_room() {
        let (mut out, mut s) = (Outbound::new(100), Socket { taken: Vec::new(), room: 2 });
        assert_eq!(out.send(b"abcd", |b| s.write(b)), Sent::Queued, "half a frame went");
        assert_eq!(out.send(b"ef", |b| s.write(b)), Sent::Queued, "waits behind the rest, not written ahead");
        assert_eq!(s.taken, b"ab");
        assert_eq!(out.flush(|b| s.write(b)).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        s.room = 3;
        assert_eq!(out.flush(|b| s.write(b)).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        s.room = 100;
        out.flush(|b| s.write(b)).unwrap();
        assert!(out.is_empty());
        assert_eq!(s.taken, b"abcdef");
    }

    #[test]
    fn a_slow_copier_loses_whole_frames_beyond_the_bound_never_parts() {
        let (mut out, mut s) = (Outbound::new(6), Socket { taken: Vec::new(), room: 0 });
        assert_eq!(out.send(b"1234", |b| s.write(b)), Sent::Queued);
        assert_eq!(out.send(b"567", |b| s.write(b)), Sent::Dropped, "7 bytes would pass the bound of 6");
        assert_eq!(out.send(b"56", |b| s.write(b)), Sent::Queued);
        s.room = 100;
        out.flush(|b| s.write(b)).unwrap();
        assert_eq!(s.taken, b"123456");
    }

    #[test]
    fn a_failed_write_breaks_the_connection_for_good() {
        let mut out = Outbound::new(100);
        assert_eq!(out.send(b"abc", |_| Err(io::ErrorKind::BrokenPipe.into())), Sent::Dropped);
        assert!(out.is_broken());
        assert_eq!(out.send(b"abc", |b| Ok(b.len())), Sent::Dropped);
        let mut out = Outbound::new(100);
        assert_eq!(out.send(b"abc", |_| Ok(1)), Sent::Queued);
        assert_eq!(out.flush(|_| Ok(0)).unwrap_err().kind(), io::ErrorKind::WriteZero);
        assert!(out.is_broken());
    }
}
