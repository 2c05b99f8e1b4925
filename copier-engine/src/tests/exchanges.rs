//! Exchanges: what the client's FIN, RST and next request wait for, what each request's answer
//! counts as, and what a rerun into a test server with leftover state needs.

use common::{
    facts::ReplyFacts,
    seq::SeqNum,
    tcp::flags::{ACK, FIN, PSH, RST, SYN},
};

use super::{captured, config, data, ep, established, handshake, reply, sent, syn_ack, CLIENT, CLIENT_ISN, ONLINE_ISN};
use crate::{capture::Link, Config, Engine};

const PORT: u16 = 40000;

fn client() -> common::endpoint::Endpoint {
    ep(CLIENT, PORT)
}

/// The client's FIN (or RST) after it received `response` bytes, at stream offset `offset`.
fn close(flags: u8, offset: u32, response: u32) -> Vec<u8> {
    captured(PORT, flags | ACK, CLIENT_ISN.wrapping_add(1).wrapping_add(offset), ONLINE_ISN + 1 + response, &[], &[])
}

fn flags_sent(e: &mut Engine) -> Vec<u8> {
    sent(e).iter().map(|s| s.flags).collect()
}

#[test]
fn a_reset_after_the_answer_waits_for_the_target_to_answer() {
    let mut e = established(config(), 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, b"GET /a HTTP/1.1\r\n\r\n"));
    e.on_captured(2_500, Link::Ip, &close(RST, 19, 300)); // reset once 300 answer bytes arrived
    assert_eq!(flags_sent(&mut e), [ACK | PSH], "the request, not the reset");
    e.on_reply(3_000, &reply(client(), 19, 0, 0, 0));
    assert!(sent(&mut e).is_empty(), "taken, not answered: the reset waits");
    e.on_reply(900_000, &reply(client(), 19, 0, 300, PSH)); // a slow answer
    let s = sent(&mut e);
    let rst = s.iter().find(|p| p.flags & RST != 0).expect("the reset goes after the answer");
    assert_eq!(rst.seq, SeqNum(CLIENT_ISN.wrapping_add(1 + 19)), "where the target expects it");
    assert_eq!(e.exchanges().totals(), (1, 0, 0, 0), "answered in full");
    assert_eq!(e.counters().sessions_reset, 1);
}

#[test]
fn a_fin_waits_for_a_slow_answer_to_a_large_upload() {
    let mut e = established(config(), 1460, 65535);
    let body = vec![b'x'; 20_000];
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, &body));
    e.on_captured(2_000, Link::Ip, &close(FIN, 20_000, 120));
    let mut acked = 0;
    let mut now = 3_000;
    while acked < 20_000 {
        sent(&mut e);
        acked = (acked + 1460 * 4).min(20_000);
        now += 1_500_000; // the upload takes seconds: acknowledgements are progress
        e.on_reply(now, &reply(client(), acked, 0, 0, 0));
    }
    sent(&mut e);
    let answer_at = now + 4_000_000; // the backend answers 4 s after the last byte
    e.on_timer(answer_at - 1);
    assert!(flags_sent(&mut e).iter().all(|f| f & FIN == 0), "no FIN before the answer");
    e.on_reply(answer_at, &reply(client(), 20_000, 0, 120, PSH));
    assert!(flags_sent(&mut e).iter().any(|f| f & FIN != 0), "the FIN follows the answer");
    let t = &e.exchanges().targets()[0];
    assert_eq!((t.answered, t.answer_timeouts), (1, 0));
    // From the last request byte sent (the window took all of it at once) to the answer.
    let latency = t.target_latency_us.max() as i64;
    let expected = (answer_at - 2_000) as i64;
    assert!((latency - expected).abs() <= expected / 100, "{latency} (histograms keep 1 %)");
}

#[test]
fn the_time_an_answer_waited_at_the_intercept_is_not_the_targets_latency() {
    let answered_after = |age_us: u32| {
        let mut e = established(config(), 1460, 65535);
        e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, b"GET /a HTTP/1.1\r\n\r\n"));
        e.on_captured(2_500, Link::Ip, &close(FIN, 19, 300)); // the exchange ends with the answer
        sent(&mut e);
        // Facts that come 1 800 µs after the request left, of a reply `age_us` old.
        e.on_reply(3_800, &ReplyFacts { age_us, ..reply(client(), 19, 0, 300, PSH) });
        e.exchanges().targets()[0].target_latency_us.max()
    };
    assert!(answered_after(0).abs_diff(1_800) <= 18, "{}", answered_after(0));
    assert!(answered_after(1_000).abs_diff(800) <= 8, "{}", answered_after(1_000));
    assert_eq!(answered_after(5_000), 1, "never before the request left");
}

#[test]
fn pipelined_requests_hold_the_close_until_every_answer_arrived() {
    let mut e = established(config(), 1460, 65535);
    let ten: Vec<u8> = (0..10).flat_map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n").into_bytes()).collect();
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, &ten));
    e.on_captured(2_000, Link::Ip, &close(FIN, ten.len() as u32, 1_000));
    sent(&mut e);
    e.on_reply(3_000, &reply(client(), ten.len() as u32, 0, 600, PSH));
    assert!(flags_sent(&mut e).iter().all(|f| f & FIN == 0), "six answers of ten: no FIN");
    e.on_reply(4_000, &reply(client(), ten.len() as u32, 600, 400, PSH));
    assert!(flags_sent(&mut e).iter().any(|f| f & FIN != 0));
    assert_eq!(e.exchanges().totals(), (1, 0, 0, 0));
}

#[test]
fn an_unanswered_request_moves_on_after_the_answer_timeout_and_is_counted() {
    let cfg = Config { answer_timeout_us: 2_000_000, ..config() };
    let mut e = established(cfg, 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, b"first"));
    e.on_captured(2_000, Link::Ip, &data(PORT, 5, 50, b"second"));
    sent(&mut e);
    e.on_reply(3_000, &reply(client(), 5, 0, 0, 0));
    e.on_timer(3_000 + 2_000_000 - 1);
    assert!(sent(&mut e).is_empty(), "the timeout counts from the acknowledgement on");
    e.on_timer(3_000 + 2_000_000);
    assert_eq!(super::payloads(&sent(&mut e)), b"second");
    let t = &e.exchanges().targets()[0];
    assert_eq!((t.unanswered, t.answer_timeouts), (1, 1));
}

#[test]
fn the_last_request_is_judged_when_the_session_ends() {
    let mut e = established(config(), 1460, 65535);
    let request = b"GET / HTTP/1.1\r\n\r\n";
    let n = request.len() as u32;
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, request));
    // The client's bare ACK of a 70-byte answer, then the target closes first.
    e.on_captured(2_100, Link::Ip, &captured(PORT, ACK, CLIENT_ISN.wrapping_add(1 + n), ONLINE_ISN + 71, &[], &[]));
    sent(&mut e);
    e.on_reply(3_000, &reply(client(), n, 0, 70, PSH));
    e.on_reply(3_100, &reply(client(), n, 70, 0, FIN));
    assert!(flags_sent(&mut e).iter().any(|f| f & FIN != 0), "our FIN answers theirs");
    e.on_reply(3_200, &reply(client(), n + 1, 71, 0, 0));
    assert_eq!(e.counters().sessions_completed, 1);
    assert_eq!(e.exchanges().totals(), (1, 0, 0, 0), "70 of 70 bytes");
}

#[test]
fn without_waiting_every_request_is_judged_on_the_whole_answer() {
    let cfg = Config { wait_for_response: false, ..config() };
    let mut e = established(cfg, 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, b"one"));
    e.on_captured(2_000, Link::Ip, &data(PORT, 3, 10, b"two"));
    e.on_captured(2_000, Link::Ip, &close(FIN, 6, 20));
    sent(&mut e);
    e.on_reply(3_000, &reply(client(), 7, 0, 15, PSH | FIN));
    e.on_reply(3_100, &reply(client(), 7, 16, 0, 0));
    assert_eq!(e.exchanges().totals(), (1, 1, 0, 0), "10 of 10, then 5 of 10");
}

#[test]
fn a_syn_answered_by_a_leftover_connection_resets_it_and_tries_again() {
    let mut e = Engine::new(config());
    handshake(&mut e, 0, PORT);
    sent(&mut e);
    // The test server still holds this 4-tuple from an earlier run: it answers with an ACK.
    let stale = ReplyFacts { flags: ACK, seq: SeqNum(9_999), ack: SeqNum(123_456), ..syn_ack(client(), 1460, 100, 1) };
    e.on_reply(10, &stale);
    let s = sent(&mut e);
    assert_eq!((s[0].flags, s[0].seq), (RST, SeqNum(123_456)), "reset at its acknowledgement");
    assert_eq!((s[1].flags, s[1].seq), (SYN, SeqNum(CLIENT_ISN)), "then the SYN again");
    assert_eq!(e.exchanges().targets()[0].stale_connections_reset, 1);
    e.on_reply(20, &syn_ack(client(), 1460, 64240, 1));
    assert_eq!(e.active_sessions(), 1);
}

#[test]
fn a_refused_syn_is_counted_per_target() {
    let mut e = Engine::new(config());
    handshake(&mut e, 0, PORT);
    sent(&mut e);
    e.on_reply(10, &ReplyFacts { flags: RST | ACK, ..syn_ack(client(), 1460, 0, 1) });
    assert_eq!(e.exchanges().targets()[0].sessions_refused, 1);
    assert_eq!(e.active_sessions(), 0);
}

#[test]
fn the_timestamp_clock_starts_at_the_configured_offset() {
    let cfg = Config { ts_offset_ms: 4_000_000_000, ..config() };
    let mut e = Engine::new(cfg);
    e.on_captured(7_000, Link::Ip, &captured(PORT, SYN, CLIENT_ISN, 0, super::syn_options(100).as_bytes(), &[]));
    let syn = sent(&mut e).remove(0);
    assert_eq!(syn.options.timestamps.map(|(val, _)| val), Some(4_000_000_007));
}

#[test]
fn a_timeout_reset_after_a_retransmission_goes_where_the_target_expects_it() {
    let cfg = Config { idle_timeout_us: 10_000_000, ..config() };
    let mut e = established(cfg, 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, b"0123456789"));
    sent(&mut e);
    e.on_reply(3_000, &reply(client(), 4, 0, 0, 0)); // took 4 of 10 bytes
    super::run_timers(&mut e, 20_000_000);
    let rst = sent(&mut e).into_iter().find(|p| p.flags & RST != 0).expect("a reset at the end");
    assert_eq!(rst.seq, SeqNum(CLIENT_ISN.wrapping_add(1 + 4)), "at the target's acknowledgement");
}

#[test]
fn production_latency_comes_from_the_capture_times_of_the_first_copy() {
    let cfg = Config { multiply: 2, ..config() };
    let mut e = Engine::new(cfg);
    handshake(&mut e, 0, PORT);
    e.on_captured_at(10, 1_000_000, Link::Ip, &data(PORT, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    // The client acknowledged the answer 25 ms after its request, as captured.
    let ack = captured(PORT, ACK, CLIENT_ISN.wrapping_add(20), ONLINE_ISN + 101, &[], &[]);
    e.on_captured_at(11, 1_025_000, Link::Ip, &ack);
    let t = &e.exchanges().targets()[0];
    assert_eq!(t.production_latency_us.len(), 1, "once, not once per copy");
    assert_eq!(t.production_latency_us.max() / 1000, 25);
}

#[test]
fn a_close_after_a_connection_close_answer_counts_the_servers_fin_as_the_client_did() {
    let mut e = established(config(), 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(PORT, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    // Production answered 100 bytes and its FIN: the client's FIN acknowledges 101.
    e.on_captured(2_000, Link::Ip, &close(FIN, 18, 101));
    sent(&mut e);
    e.on_reply(3_000, &reply(client(), 18, 0, 100, PSH | FIN));
    assert!(flags_sent(&mut e).iter().any(|f| f & FIN != 0), "at once, not after the quiet period");
    e.on_reply(3_100, &reply(client(), 19, 101, 0, 0));
    assert_eq!(e.counters().sessions_completed, 1);
    assert_eq!(e.exchanges().totals(), (1, 0, 0, 0), "101 of 101");
}

#[test]
fn sessions_beyond_the_rate_cap_are_not_replayed_and_are_counted() {
    let cfg = Config { max_sessions_per_s: Some(2.0), ..config() };
    let mut e = Engine::new(cfg);
    for port in 40000..40005 {
        handshake(&mut e, 1_000, port);
    }
    let syns = sent(&mut e).iter().filter(|p| p.flags == SYN).count();
    assert_eq!((syns, e.counters().sessions_started, e.counters().sessions_rate_limited), (2, 2, 3));
    // A rate-limited session stays out whole: its later packets start nothing.
    e.on_captured(2_000, Link::Ip, &data(40004, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    assert!(sent(&mut e).is_empty());
    // A second later there is room again.
    handshake(&mut e, 1_001_000, 40010);
    assert_eq!(e.counters().sessions_started, 3);
}

#[test]
fn each_round_of_a_looped_capture_replays_from_ports_of_its_own() {
    let mut e = Engine::new(config());
    for round in 0..3u16 {
        let syn = captured(PORT, SYN, CLIENT_ISN, 0, super::syn_options(100).as_bytes(), &[]);
        e.on_captured_round(round as u64 * 10, round as u64 * 10, round, Link::Ip, &syn);
    }
    let ports: Vec<u16> = sent(&mut e).iter().filter(|p| p.flags == SYN).map(|p| p.src.port).collect();
    assert_eq!(ports.len(), 3, "the same captured SYN, three sessions");
    assert_eq!(ports.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "{ports:?}");
    assert_eq!(e.counters().sessions_started, 3);
}
