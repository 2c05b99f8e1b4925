//! Whether the test server answered a request as production did (docs/architecture.md §2):
//! by protocol, recognised from the request, on the first `--payload-bytes` of each answer and
//! its length. HTTP/1.x is compared by status, headers (less an ignore list) and body; RESP
//! (redis) by reply type and value; anything else by length and bytes.

use std::fmt;

/// What a request's first bytes say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Resp,
    Other,
}

impl Protocol {
    pub fn of_request(request: &[u8]) -> Self {
        const METHODS: [&[u8]; 9] =
            [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
        if METHODS.iter().any(|m| request.starts_with(m)) {
            Self::Http
        } else if request.first() == Some(&b'*') {
            Self::Resp
        } else {
            Self::Other
        }
    }
}

/// One answer as the copier saw it: its payload length and its first bytes (at most
/// `--payload-bytes`; fewer if the answer is shorter or a piece was not seen).
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub len: u32,
    pub head: &'a [u8],
}

/// Ways two answers differ, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kinds(u8);

impl Kinds {
    pub const LENGTH: Self = Self(1);
    pub const CONTENT: Self = Self(2);
    pub const STATUS: Self = Self(4);
    pub const HEADERS: Self = Self(8);
    pub const BODY: Self = Self(16);
    pub const TYPE: Self = Self(32);
    pub const VALUE: Self = Self(64);
    pub const ALL: [(Self, &'static str); 7] = [
        (Self::LENGTH, "length"),
        (Self::CONTENT, "content"),
        (Self::STATUS, "status"),
        (Self::HEADERS, "headers"),
        (Self::BODY, "body"),
        (Self::TYPE, "type"),
        (Self::VALUE, "value"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    fn set(&mut self, other: Self, on: bool) {
        if on {
            self.0 |= other.0;
        }
    }

    /// Its names, in [`Self::ALL`]'s order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL.into_iter().filter(move |(k, _)| self.contains(*k)).map(|(_, name)| name)
    }
}

impl std::ops::BitOr for Kinds {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Display for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.names().enumerate() {
            write!(f, "{}{name}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

/// How a test server's answer differs from production's: the kinds, and for HTTP the names of
/// the headers that differ (lower case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Difference {
    pub kinds: Kinds,
    pub headers: Vec<String>,
}

impl Difference {
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// What remains of this difference once what `noise` (production against the baseline, the
    /// stable build) shows is taken out: a field that differs between two runs of the same
    /// build says nothing about the candidate (timestamps, ids, cookies).
    pub fn beyond(&self, noise: &Self) -> Self {
        let mut kinds = Kinds(self.kinds.0 & !noise.kinds.0);
        let headers: Vec<String> = self.headers.iter().filter(|h| !noise.headers.contains(h)).cloned().collect();
        kinds.set(Kinds::HEADERS, !headers.is_empty());
        Self { kinds, headers }
    }
}

/// HTTP header names left out of the comparison (`--ignore-header`), lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoredHeaders(Vec<String>);

impl IgnoredHeaders {
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        Self(names.into_iter().map(|n| n.as_ref().trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect())
    }

    fn ignores(&self, name: &str) -> bool {
        self.0.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Compares the test server's answer with production's to a request of `protocol`.
pub fn compare(protocol: Protocol, production: Answer<'_>, target: Answer<'_>, ignored: &IgnoredHeaders) -> Difference {
    match protocol {
        Protocol::Http => match (HttpHead::parse(production.head), HttpHead::parse(target.head)) {
            (Some(p), Some(t)) => compare_http(&p, production, &t, target, ignored),
            // Not a whole response head in what was kept: compared as bytes.
            _ => compare_bytes(production, target),
        },
        Protocol::Resp => compare_resp(production, target),
        Protocol::Other => compare_bytes(production, target),
    }
}

/// Whether the bytes both answers have differ: what can be compared of answers kept to their
/// first bytes.
fn common_prefix_differs(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] != b[..n]
}

fn compare_bytes(production: Answer<'_>, target: Answer<'_>) -> Difference {
    let mut kinds = Kinds::default();
    kinds.set(Kinds::LENGTH, production.len != target.len);
    kinds.set(Kinds::CONTENT, common_prefix_differs(production.head, target.head));
    Difference { kinds, headers: Vec::new() }
}

struct HttpHead {
    status: u16,
    /// (lower-case name, value), sorted.
    headers: Vec<(String, Vec<u8>)>,
    len: usize,
}

impl HttpHead {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut storage);
        let httparse::Status::Complete(len) = response.parse(bytes).ok()? else { return None };
        let mut headers: Vec<(String, Vec<u8>)> =
            response.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
        headers.sort();
        Some(Self { status: response.code?, headers, len })
    }
}

fn compare_http(
    p: &HttpHead,
    production: Answer<'_>,
    t: &HttpHead,
    target: Answer<'_>,
    ignored: &IgnoredHeaders,
) -> Difference {
    let mut kinds = Kinds::default();
    kinds.set(Kinds::STATUS, p.status != t.status);
    let kept = |h: &HttpHead| -> Vec<(String, Vec<u8>)> {
        h.headers.iter().filter(|(name, _)| !ignored.ignores(name)).cloned().collect()
    };
    let (ph, th) = (kept(p), kept(t));
    let mut headers: Vec<String> = ph
        .iter()
        .filter(|h| !th.contains(h))
        .chain(th.iter().filter(|h| !ph.contains(h)))
        .map(|(name, _)| name.clone())
        .collect();
    headers.sort();
    headers.dedup();
    kinds.set(Kinds::HEADERS, !headers.is_empty());
    let body_len = |a: Answer<'_>, h: &HttpHead| a.len.saturating_sub(h.len as u32);
    let bodies_differ = body_len(production, p) != body_len(target, t)
        || common_prefix_differs(&production.head[p.len..], &target.head[t.len..]);
    kinds.set(Kinds::BODY, bodies_differ);
    Difference { kinds, headers }
}

fn compare_resp(production: Answer<'_>, target: Answer<'_>) -> Difference {
    let mut kinds = Kinds::default();
    kinds.set(Kinds::TYPE, production.head.first() != target.head.first());
    if !kinds.contains(Kinds::TYPE) {
        kinds.set(Kinds::VALUE, production.len != target.len || common_prefix_differs(production.head, target.head));
    }
    Difference { kinds, headers: Vec::new() }
}

/// A request's or answer's first line, for people to read: at most 120 characters, control
/// bytes shown as `.`.
pub fn first_line(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(bytes.len()).min(120);
    bytes[..end].iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect()
}

/// A redis command's words (`GET k`), from its RESP array, as far as the kept bytes go.
fn resp_words(request: &[u8]) -> Vec<String> {
    let mut lines = request.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let count = lines.next().and_then(|l| std::str::from_utf8(l.strip_prefix(b"*")?).ok()?.parse::<usize>().ok());
    let mut words = Vec::new();
    for _ in 0..count.unwrap_or(0).min(8) {
        match (lines.next(), lines.next()) {
            (Some(len), Some(word)) if len.first() == Some(&b'$') => words.push(first_line(word)),
            _ => break,
        }
    }
    words
}

/// A request for people to read: its first line, or for redis its command (`GET k`).
pub fn describe_request(protocol: Protocol, request: &[u8]) -> String {
    match protocol {
        Protocol::Resp => {
            let words = resp_words(request);
            if words.is_empty() {
                first_line(request)
            } else {
                words.join(" ").chars().take(120).collect()
            }
        }
        _ => first_line(request),
    }
}

/// What a request is grouped under in the report: an HTTP method and the path's first
/// segment (`GET /api/`), a redis command (`SET`), or its first line.
pub fn request_group(protocol: Protocol, request: &[u8]) -> String {
    match protocol {
        Protocol::Http => {
            let line = first_line(request);
            let mut parts = line.split(' ');
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = path.split('?').next().unwrap_or("");
            let segment = match path.get(1..).and_then(|p| p.find('/')) {
                Some(i) => &path[..i + 2],
                None => path,
            };
            format!("{method} {segment}")
        }
        Protocol::Resp => resp_words(request).first().map_or_else(|| first_line(request), |c| c.to_ascii_uppercase()),
        Protocol::Other => first_line(request),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: &str, headers: &[&str], body: &str) -> Vec<u8> {
        let mut s = format!("HTTP/1.1 {status}\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.into_bytes()
    }

    fn answer(bytes: &[u8]) -> Answer<'_> {
        Answer { len: bytes.len() as u32, head: bytes }
    }

    fn http_diff(a: &[u8], b: &[u8], ignored: &[&str]) -> Difference {
        compare(Protocol::Http, answer(a), answer(b), &IgnoredHeaders::new(ignored))
    }

    #[test]
    fn requests_are_recognised_by_their_first_bytes() {
        assert_eq!(Protocol::of_request(b"GET / HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(Protocol::of_request(b"POST /upload HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(Protocol::of_request(b"*3\r\n$3\r\nSET\r\n"), Protocol::Resp);
        assert_eq!(Protocol::of_request(b"GETX"), Protocol::Other);
        assert_eq!(Protocol::of_request(b""), Protocol::Other);
    }

    #[test]
    fn equal_http_answers_do_not_differ() {
        let a = http("200 OK", &["Server: nginx", "Date: Mon"], "ok\n");
        assert!(http_diff(&a, &a, &[]).is_empty());
    }

    #[test]
    fn http_answers_differ_by_status_headers_and_body() {
        let prod = http("200 OK", &["Server: nginx", "X-Id: 1"], "ok\n");
        let status = http("500 Internal Server Error", &["Server: nginx", "X-Id: 1"], "ok\n");
        assert_eq!(http_diff(&prod, &status, &[]).kinds, Kinds::STATUS);
        let header = http("200 OK", &["Server: nginx", "X-Id: 2"], "ok\n");
        let d = http_diff(&prod, &header, &[]);
        assert_eq!((d.kinds, d.headers), (Kinds::HEADERS, vec!["x-id".to_owned()]));
        assert!(http_diff(&prod, &header, &["X-Id"]).is_empty(), "an ignored header");
        let body = http("200 OK", &["Server: nginx", "X-Id: 1"], "no\n");
        assert_eq!(http_diff(&prod, &body, &[]).kinds, Kinds::BODY);
        // A longer body also changes Content-Length.
        let longer = http("200 OK", &["Server: nginx", "X-Id: 1"], "okay\n");
        let d = http_diff(&prod, &longer, &[]);
        assert_eq!((d.kinds.to_string(), d.headers), ("headers,body".to_owned(), vec!["content-length".to_owned()]));
    }

    #[test]
    fn header_order_and_name_case_do_not_matter() {
        let a = http("200 OK", &["Server: nginx", "X-A: 1"], "ok");
        let b = http("200 OK", &["x-a: 1", "server: nginx"], "ok");
        assert!(http_diff(&a, &b, &[]).is_empty());
    }

    #[test]
    fn a_body_is_compared_on_the_bytes_both_heads_hold_and_on_its_length() {
        let prod = http("200 OK", &[], &"x".repeat(5000));
        let same = prod.clone();
        // Kept to 100 bytes on one side: equal as far as both go.
        let cut = Answer { len: same.len() as u32, head: &same[..100] };
        assert!(compare(Protocol::Http, answer(&prod), cut, &IgnoredHeaders::default()).is_empty());
        let shorter = Answer { len: same.len() as u32 - 1, head: &same[..100] };
        assert_eq!(compare(Protocol::Http, answer(&prod), shorter, &IgnoredHeaders::default()).kinds, Kinds::BODY);
    }

    #[test]
    fn resp_replies_differ_by_type_then_value() {
        let ok = answer(b"+OK\r\n");
        let diff = |a, b| compare(Protocol::Resp, a, b, &IgnoredHeaders::default()).kinds;
        assert_eq!(diff(ok, answer(b"-ERR wrong\r\n")), Kinds::TYPE);
        assert_eq!(diff(answer(b"$3\r\nabc\r\n"), answer(b"$3\r\nabd\r\n")), Kinds::VALUE);
        assert!(diff(answer(b"$3\r\nabc\r\n"), answer(b"$3\r\nabc\r\n")).is_empty());
    }

    #[test]
    fn other_protocols_differ_by_length_and_content() {
        let diff = |a, b| compare(Protocol::Other, a, b, &IgnoredHeaders::default()).kinds;
        assert_eq!(diff(answer(b"hello"), answer(b"hellO")), Kinds::CONTENT);
        assert_eq!(diff(answer(b"hello"), answer(b"hello!")), Kinds::LENGTH);
        // An unparseable HTTP answer falls back to bytes.
        let kinds = compare(Protocol::Http, answer(b"garbage"), answer(b"garbagE"), &IgnoredHeaders::default()).kinds;
        assert_eq!(kinds, Kinds::CONTENT);
    }

    #[test]
    fn what_the_baseline_shows_is_noise() {
        let prod = http("200 OK", &["Date: Mon", "X-Request-Id: a1"], "ok");
        let baseline = http("200 OK", &["Date: Tue", "X-Request-Id: b2"], "ok");
        let candidate = http("500 Oops", &["Date: Wed", "X-Request-Id: c3"], "ok");
        let noise = http_diff(&prod, &baseline, &[]);
        let d = http_diff(&prod, &candidate, &[]).beyond(&noise);
        assert_eq!((d.kinds, d.headers), (Kinds::STATUS, vec![]));
        let same_build = http("200 OK", &["Date: Thu", "X-Request-Id: d4"], "ok");
        assert!(http_diff(&prod, &same_build, &[]).beyond(&noise).is_empty());
    }

    #[test]
    fn requests_are_grouped_by_method_and_first_path_segment_or_command() {
        assert_eq!(request_group(Protocol::Http, b"GET /api/v1/users?id=3 HTTP/1.1\r\n"), "GET /api/");
        assert_eq!(request_group(Protocol::Http, b"GET /health HTTP/1.1\r\n"), "GET /health");
        assert_eq!(request_group(Protocol::Resp, b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n"), "GET");
        assert_eq!(describe_request(Protocol::Resp, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), "GET k");
        assert_eq!(describe_request(Protocol::Resp, b"*2\r\n$3\r\nGE"), "GE", "cut short");
        assert_eq!(first_line(b"\x01bin\r\nary"), ".bin");
    }
}
