//! What a session keeps of its exchanges for the comparison (`--payload-bytes`): each request's
//! first bytes and production's answer to it (from the capture's server segments), and the test
//! server's answer to the request in progress (from the intercepts' payload). Bounded by the
//! limit per answer, and dropped as each exchange is judged.

use std::collections::VecDeque;

/// Request bytes kept: enough for a request line or a redis command.
pub const REQUEST_HEAD: usize = 256;

/// One exchange until it is judged.
#[derive(Debug)]
pub struct Kept {
    /// Where the request starts in the client stream, and production's answer in the server's.
    pub request_start: u32,
    pub answer_start: u32,
    pub request: Vec<u8>,
    pub production: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct SessionAnswers {
    kept: VecDeque<Kept>,
    /// Where production's FIN is in its answer stream, once captured.
    pub production_fin: Option<u32>,
    /// The test server's answer to the request in progress: its first bytes.
    pub target: Vec<u8>,
}

/// Appends to `kept` the part of `bytes` (at `offset` of the stream `kept` starts) that
/// continues it, up to `limit` in all; what comes before (a retransmission) or after a gap is
/// left out.
fn extend_at(kept: &mut Vec<u8>, offset: u32, bytes: &[u8], limit: usize) {
    let have = kept.len() as u64;
    let (offset, end) = (u64::from(offset), u64::from(offset) + bytes.len() as u64);
    if offset > have || end <= have || kept.len() >= limit {
        return;
    }
    let from = (have - offset) as usize;
    let take = (bytes.len() - from).min(limit - kept.len());
    kept.extend_from_slice(&bytes[from..from + take]);
}

impl SessionAnswers {
    /// A request starts at `request_start` of the client stream, sent after the client had
    /// `answer_start` bytes of production's answers: production's answer to it starts there.
    pub fn request(&mut self, request_start: u32, answer_start: u32) {
        let pos = self.kept.partition_point(|k| k.request_start < request_start);
        if self.kept.get(pos).is_some_and(|k| k.request_start == request_start) {
            return;
        }
        let kept = Kept { request_start, answer_start, request: Vec::new(), production: Vec::new() };
        self.kept.insert(pos, kept);
    }

    /// Client bytes at `offset` of its stream.
    pub fn client_bytes(&mut self, offset: u32, bytes: &[u8]) {
        let pos = self.kept.partition_point(|k| k.request_start <= offset);
        if let Some(k) = pos.checked_sub(1).and_then(|i| self.kept.get_mut(i)) {
            extend_at(&mut k.request, offset - k.request_start, bytes, REQUEST_HEAD);
        }
    }

    /// Production's bytes at `offset` of its answer stream.
    pub fn production_bytes(&mut self, offset: u32, bytes: &[u8], limit: usize) {
        let k = self.kept.iter_mut().rev().find(|k| k.answer_start <= offset);
        if let Some(k) = k {
            extend_at(&mut k.production, offset - k.answer_start, bytes, limit);
        }
    }

    /// The test server's bytes at `offset` of its answer to the request in progress.
    pub fn target_bytes(&mut self, offset: u32, bytes: &[u8], limit: usize) {
        extend_at(&mut self.target, offset, bytes, limit);
    }

    /// The exchange whose request starts at `request_start`, now judged; those before it go.
    pub fn take(&mut self, request_start: u32) -> Option<Kept> {
        while self.kept.front().is_some_and(|k| k.request_start < request_start) {
            self.kept.pop_front();
        }
        if self.kept.front().is_some_and(|k| k.request_start == request_start) {
            self.kept.pop_front()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_continue_what_is_kept_up_to_the_limit() {
        let mut k = Vec::new();
        extend_at(&mut k, 0, b"hello", 8);
        extend_at(&mut k, 2, b"llo wor", 8); // overlaps: the new part is kept
        extend_at(&mut k, 20, b"gap", 8); // after a hole: left out
        extend_at(&mut k, 0, b"he", 8); // a retransmission
        assert_eq!(k, b"hello wo");
    }

    #[test]
    fn production_bytes_go_to_the_request_they_answer() {
        let mut a = SessionAnswers::default();
        a.request(0, 0);
        a.client_bytes(0, b"GET /a HTTP/1.1\r\n\r\n");
        a.production_bytes(0, b"first answer", 64);
        a.request(19, 12);
        a.client_bytes(19, b"GET /b HTTP/1.1\r\n\r\n");
        a.production_bytes(12, b"second", 64);
        let first = a.take(0).unwrap();
        assert_eq!(
            (first.request.as_slice(), first.production.as_slice()),
            (&b"GET /a HTTP/1.1\r\n\r\n"[..], &b"first answer"[..])
        );
        let second = a.take(19).unwrap();
        assert_eq!(second.production, b"second");
        assert!(a.take(19).is_none());
    }

    #[test]
    fn judging_a_later_exchange_drops_earlier_ones() {
        let mut a = SessionAnswers::default();
        for (start, answer) in [(0, 0), (10, 5), (20, 9)] {
            a.request(start, answer);
        }
        assert_eq!(a.take(20).map(|k| k.answer_start), Some(9));
        assert!(a.take(0).is_none());
    }
}
