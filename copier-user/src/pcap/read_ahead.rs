//! The bytes ahead of the capture parsers. pcap-file's own readers zero an 8 MB buffer for
//! every file they open; this one starts at 64 KiB and grows only as far as a record needs.

use std::io::{self, Read};

use pcap_file::PcapError;

const INITIAL: usize = 64 * 1024;
/// No capture record is this long (tcpdump's largest snap length is 256 KiB); a length field
/// that says so is corrupt, and is not followed by reading the rest of the file into memory.
pub const MAX_RECORD: usize = 16 << 20;

pub struct ReadAhead {
    input: Box<dyn Read + Send>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Bytes handed to successful parses so far.
    pub consumed: u64,
}

impl ReadAhead {
    pub fn new(input: Box<dyn Read + Send>) -> Self {
        Self { input, buf: vec![0; INITIAL], pos: 0, len: 0, consumed: 0 }
    }

    /// Whether any byte is left to parse.
    pub fn has_data_left(&mut self) -> Result<bool, PcapError> {
        Ok(self.pos < self.len || self.fill()? > 0)
    }

    /// Runs `parse` on the unread bytes, reading more for as long as it says it needs more.
    /// `parse` returns how many bytes it used; it must not act on its input unless it succeeds,
    /// for it is called again on a longer input after `IncompleteBuffer`.
    pub fn parse<R>(&mut self, mut parse: impl FnMut(&[u8]) -> Result<(usize, R), PcapError>) -> Result<R, PcapError> {
        loop {
            match parse(&self.buf[self.pos..self.len]) {
                Ok((used, value)) => {
                    self.pos += used;
                    self.consumed += used as u64;
                    return Ok(value);
                }
                Err(PcapError::IncompleteBuffer) => {
                    if self.fill()? == 0 {
                        return Err(PcapError::IoError(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves the unread bytes to the front, grows the buffer if they fill it, and reads more.
    fn fill(&mut self) -> Result<usize, PcapError> {
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        if self.len == self.buf.len() {
            if self.buf.len() >= MAX_RECORD {
                return Err(PcapError::InvalidField("a record longer than 16 MiB"));
            }
            self.buf.resize((self.buf.len() * 2).min(MAX_RECORD), 0);
        }
        loop {
            match self.input.read(&mut self.buf[self.len..]) {
                Ok(n) => {
                    self.len += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PcapError::IoError(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A "record": a length byte, then that many bytes.
    fn record(data: &[u8]) -> Result<(usize, Vec<u8>), PcapError> {
        let (&n, rest) = data.split_first().ok_or(PcapError::IncompleteBuffer)?;
        let body = rest.get(..n as usize).ok_or(PcapError::IncompleteBuffer)?;
        Ok((1 + body.len(), body.to_vec()))
    }

    /// Reads one byte per call, so that every record needs several fills.
    struct Trickle(Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn records_split_across_reads_are_whole() {
        let mut r = ReadAhead::new(Box::new(Trickle(Cursor::new(vec![2, b'a', b'b', 0, 1, b'c']))));
        assert_eq!(r.parse(record).unwrap(), b"ab");
        assert_eq!(r.parse(record).unwrap(), b"");
        assert_eq!(r.parse(record).unwrap(), b"c");
        assert_eq!(r.consumed, 6);
        assert!(!r.has_data_left().unwrap());
    }

    #[test]
    fn a_record_cut_by_the_end_of_the_input_is_an_unexpected_end() {
        let mut r = ReadAhead::new(Box::new(Cursor::new(vec![5, 1, 2])));
        let err = r.parse(record).unwrap_err();
        assert!(matches!(err, PcapError::IoError(ref e) if e.kind() == io::ErrorKind::UnexpectedEof), "{err}");
    }

    #[test]
    fn the_buffer_grows_for_a_long_record_and_stops_at_the_cap() {
        // A record of 100 KiB: longer than the initial buffer.
        let long = |data: &[u8]| -> Result<(usize, usize), PcapError> {
            if data.len() < 100 * 1024 {
                Err(PcapError::IncompleteBuffer)
            } else {
                Ok((100 * 1024, data.len()))
            }
        };
        let mut r = ReadAhead::new(Box::new(Cursor::new(vec![7; 100 * 1024])));
        assert_eq!(r.parse(long).unwrap(), 100 * 1024);
        // A parser that is never satisfied: bounded by MAX_RECORD, not by the input.
        let mut r = ReadAhead::new(Box::new(io::repeat(0)));
        let err = r.parse(|_| Err::<(usize, ()), _>(PcapError::IncompleteBuffer)).unwrap_err();
        assert!(matches!(err, PcapError::InvalidField(_)), "{err}");
    }
}
