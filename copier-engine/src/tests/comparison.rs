//! The comparison: production's answers from the capture's server segments, the test server's
//! from the payload the intercepts send along, judged exchange by exchange.

use common::{
    seq::SeqNum,
    tcp::flags::{ACK, FIN, PSH},
};

use super::{config, data, emit, ep, established, reply, sent, CLIENT, CLIENT_ISN, ONLINE, ONLINE_ISN};
use crate::{capture::Link, compare::Kinds, Config, Engine, Replies};

const PORT: u16 = 40000;

fn comparing() -> Config {
    Config { payload_bytes: 4096, ..config() }
}

/// A captured segment of the online server to the client: `payload` at `offset` of its answers.
fn production(offset: u32, acked: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    emit::write(
        &mut out,
        &emit::Segment {
            src: ep(ONLINE, 80),
            dst: ep(CLIENT, PORT),
            seq: SeqNum(ONLINE_ISN + 1 + offset),
            ack: SeqNum(CLIENT_ISN.wrapping_add(1).wrapping_add(acked)),
            flags: ACK | flags,
            window: 502,
            options: &[],
            payload,
        },
    );
    out
}

fn http(status: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nServer: nginx\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The test server's answer `payload` to the request that ends at `acked`, from `sent` on.
fn answer(e: &mut Engine, now: u64, acked: u32, sent_before: u32, payload: &[u8], flags: u8) {
    let mut replies = Replies::default();
    replies.push(reply(ep(CLIENT, PORT), acked, sent_before, payload.len() as u16, PSH | flags), payload);
    e.on_replies_with_payload(now, &replies);
}

/// Two keep-alive requests, as captured with production's answers; the test server answers the
/// first as production did and the second with `second`.
fn two_requests(e: &mut Engine, second: &[u8]) {
    let (a, b) = (b"GET /a HTTP/1.1\r\n\r\n", b"GET /b/1 HTTP/1.1\r\n\r\n");
    let (first, ok) = (http("200 OK", "one"), http("200 OK", "two"));
    let n = a.len() as u32;
    let f = first.len() as u32;
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, a));
    e.on_captured(2_100, Link::Ip, &production(0, n, PSH, &first));
    e.on_captured(2_200, Link::Ip, &data(PORT, n, f, b));
    e.on_captured(2_300, Link::Ip, &production(f, n + b.len() as u32, PSH, &ok));
    sent(e);
    answer(e, 3_000, n, 0, &first, 0);
    sent(e);
    answer(e, 4_000, n + b.len() as u32, f, second, 0);
    // The client's FIN after the second answer, which judges it.
    let end = n + b.len() as u32;
    e.on_captured(4_100, Link::Ip, &data(PORT, end, f + ok.len() as u32, b""));
    e.shutdown(5_000);
}

#[test]
fn answers_like_production_compare_equal() {
    let mut e = established(comparing(), 1460, 65535);
    two_requests(&mut e, &http("200 OK", "two"));
    let c = &e.exchanges().targets()[0].comparison;
    assert_eq!((c.compared, c.different, c.not_compared), (2, 0, 0), "{c:?}");
    assert_eq!(e.counters().captured_answers, 2);
}

#[test]
fn a_different_status_is_named_with_its_request() {
    let mut e = established(comparing(), 1460, 65535);
    two_requests(&mut e, &http("500 Internal Server Error", "two"));
    let c = &e.exchanges().targets()[0].comparison;
    assert_eq!((c.compared, c.different), (2, 1), "{c:?}");
    assert_eq!(c.by_kind[2], 1, "status");
    let sample = &c.samples[0];
    assert_eq!(sample.request, "GET /b/1 HTTP/1.1");
    assert_eq!(
        (sample.production.as_str(), sample.target.as_str()),
        ("HTTP/1.1 200 OK", "HTTP/1.1 500 Internal Server Error")
    );
    assert_eq!(sample.difference.kinds, Kinds::STATUS);
    assert_eq!(c.groups["GET /b/"].different, 1);
    assert_eq!(c.groups["GET /a"].different, 0);
}

#[test]
fn without_production_bytes_an_answer_is_not_compared() {
    // Live copy mode: the capture holds the client's side only.
    let mut e = established(comparing(), 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    e.on_captured(2_500, Link::Ip, &data(PORT, 18, 40, b"")); // the client acknowledged 40 bytes
    sent(&mut e);
    answer(&mut e, 3_000, 18, 0, &[b'x'; 40], FIN);
    e.shutdown(4_000);
    let t = &e.exchanges().targets()[0];
    assert_eq!((t.answered, t.comparison.compared, t.comparison.not_compared), (1, 0, 1));
}

#[test]
fn without_payload_bytes_nothing_is_kept_or_compared() {
    let mut e = established(config(), 1460, 65535);
    two_requests(&mut e, &http("500 Internal Server Error", "two"));
    let t = &e.exchanges().targets()[0];
    assert_eq!((t.answered, t.comparison.compared, t.comparison.not_compared), (2, 0, 0));
}

mod baseline {
    use common::{endpoint::Endpoint, facts::ReplyFacts};

    use super::*;
    use crate::{mapping::parse_mappings, tests::syn_ack};

    const BASELINE: Endpoint = Endpoint::v4([10, 100, 2, 2], 8080);
    const CANDIDATE: Endpoint = Endpoint::v4([10, 100, 2, 3], 8080);

    fn with_date(status: &str, date: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    /// The test server `target`'s facts for the copy replayed from `port`.
    fn from(target: Endpoint, port: u16, f: ReplyFacts) -> ReplyFacts {
        ReplyFacts { client: ep(CLIENT, port), target, ..f }
    }

    /// One request captured with production's answer, replayed to the baseline and a candidate,
    /// which answer `baseline` and `candidate`; the candidate answers before or after the baseline.
    fn judged(baseline: &[u8], candidate: &[u8], candidate_first: bool) -> Engine {
        let cfg = Config {
            payload_bytes: 4096,
            baseline: Some(BASELINE),
            ..Config::new(parse_mappings("80-10.100.2.2:8080,80-10.100.2.3:8080").unwrap())
        };
        let mut e = Engine::new(cfg);
        super::super::handshake(&mut e, 0, PORT);
        // Copy 0 goes to the baseline from the captured port, copy 1 to the candidate, shifted.
        let ports = [(BASELINE, PORT), (CANDIDATE, PORT + 1000)];
        for (target, port) in ports {
            e.on_reply(1_000, &from(target, port, syn_ack(ep(CLIENT, port), 1460, 65535, 5000)));
        }
        let request = b"GET /x HTTP/1.1\r\n\r\n";
        let n = request.len() as u32;
        let prod = with_date("200 OK", "Mon", "same");
        e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, request));
        e.on_captured(2_100, Link::Ip, &production(0, n, PSH | FIN, &prod));
        e.on_captured(2_200, Link::Ip, &data(PORT, n, prod.len() as u32 + 1, b""));
        sent(&mut e);
        let mut answers = [(BASELINE, PORT, baseline), (CANDIDATE, PORT + 1000, candidate)];
        if candidate_first {
            answers.reverse();
        }
        for (i, (target, port, answer)) in answers.into_iter().enumerate() {
            let mut r = Replies::default();
            r.push(from(target, port, reply(ep(CLIENT, port), n, 0, answer.len() as u16, PSH | FIN)), answer);
            e.on_replies_with_payload(3_000 + i as u64 * 1000, &r);
        }
        e.shutdown(10_000);
        e
    }

    fn comparison(e: &Engine, target: Endpoint) -> crate::exchange::Comparison {
        e.exchanges().targets().iter().find(|t| t.target == target).unwrap().comparison.clone()
    }

    #[test]
    fn what_production_and_the_baseline_differ_in_is_noise() {
        for candidate_first in [false, true] {
            let e = judged(&with_date("200 OK", "Tue", "same"), &with_date("200 OK", "Wed", "same"), candidate_first);
            let (b, c) = (comparison(&e, BASELINE), comparison(&e, CANDIDATE));
            assert_eq!((b.compared, b.different), (1, 1), "the baseline's own date differs");
            assert_eq!((c.compared, c.different), (1, 0), "candidate first: {candidate_first}");
        }
    }

    #[test]
    fn what_only_the_candidate_differs_in_is_reported() {
        for candidate_first in [false, true] {
            let e = judged(&with_date("200 OK", "Tue", "same"), &with_date("500 Oops", "Wed", "same"), candidate_first);
            let c = comparison(&e, CANDIDATE);
            assert_eq!((c.compared, c.different), (1, 1));
            assert_eq!(c.samples[0].difference.kinds, Kinds::STATUS, "the date is noise; the status is not");
        }
    }
}
