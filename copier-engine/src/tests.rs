//! The engine, specified on synthetic packets: what it sends for what it captured and what the
//! test server answered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::{
    endpoint::Endpoint,
    facts::{option_bits, ReplyFacts},
    seq::SeqNum,
    tcp::flags::{ACK, FIN, PSH, RST, SYN},
};

use super::{
    capture::{self, ClientSegment, Link},
    emit::{self, Options},
    Config, Engine, Event,
};
use crate::mapping::parse_mappings;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 2);
pub const ONLINE: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
pub const TARGET: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 2);
pub const CLIENT_ISN: u32 = 0xffff_ff00; // wraps during every session
pub const ONLINE_ISN: u32 = 7_000_000;
pub const TARGET_ISN: u32 = 42;

pub fn config() -> Config {
    Config::new(parse_mappings("80-10.100.2.2:8080").unwrap())
}

pub fn ep(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint::v4(ip.octets(), port)
}

pub fn target() -> Endpoint {
    ep(TARGET, 8080)
}

/// A captured client packet from CLIENT:port to ONLINE:80.
pub fn captured(port: u16, flags: u8, seq: u32, ack: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    emit::write(
        &mut out,
        &emit::Segment {
            src: ep(CLIENT, port),
            dst: ep(ONLINE, 80),
            seq: SeqNum(seq),
            ack: SeqNum(ack),
            flags,
            window: 502,
            options,
            payload,
        },
    );
    out
}

pub fn syn_options(ts: u32) -> Options {
    Options::syn(1460, Some(7), true, Some((ts, 0)))
}

/// The SYN and the handshake ACK of a session from `port`.
pub fn handshake(engine: &mut Engine, now: u64, port: u16) {
    engine.on_captured(now, Link::Ip, &captured(port, SYN, CLIENT_ISN, 0, syn_options(100).as_bytes(), &[]));
    engine.on_captured(now, Link::Ip, &captured(port, ACK, CLIENT_ISN.wrapping_add(1), ONLINE_ISN + 1, &[], &[]));
}

/// Data from the client after it received `response` bytes of the online answer.
pub fn data(port: u16, offset: u32, response: u32, payload: &[u8]) -> Vec<u8> {
    captured(port, ACK | PSH, CLIENT_ISN.wrapping_add(1).wrapping_add(offset), ONLINE_ISN + 1 + response, &[], payload)
}

/// The test server's SYN-ACK to `client`.
pub fn syn_ack(client: Endpoint, mss: u16, window: u16, ts_val: u32) -> ReplyFacts {
    ReplyFacts {
        client,
        target: target(),
        seq: SeqNum(TARGET_ISN),
        ack: SeqNum(CLIENT_ISN.wrapping_add(1)),
        window,
        flags: SYN | ACK,
        options: option_bits::MSS | option_bits::WINDOW_SCALE | option_bits::TIMESTAMPS | option_bits::SACK_PERMITTED,
        mss,
        window_scale: 0,
        ts_val,
        ..Default::default()
    }
}

/// A reply acknowledging `acked` client bytes and carrying `payload` bytes from `sent` on.
pub fn reply(client: Endpoint, acked: u32, sent: u32, payload: u16, flags: u8) -> ReplyFacts {
    ReplyFacts {
        client,
        target: target(),
        seq: SeqNum(TARGET_ISN + 1 + sent),
        ack: SeqNum(CLIENT_ISN.wrapping_add(1).wrapping_add(acked)),
        window: 65535,
        flags: ACK | flags,
        payload_len: payload,
        ..Default::default()
    }
}

/// What the engine sent since the last call, parsed.
pub fn sent(engine: &mut Engine) -> Vec<Sent> {
    let out = engine.outbox();
    let packets = out.packets().map(|p| Sent::from(capture::parse(Link::Ip, p).unwrap().unwrap())).collect();
    out.clear();
    packets
}

/// A sent segment, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: u8,
    pub options: common::tcp::TcpOptions,
    pub payload: Vec<u8>,
}

impl From<ClientSegment<'_>> for Sent {
    fn from(s: ClientSegment<'_>) -> Self {
        Self {
            src: s.src,
            dst: s.dst,
            seq: s.seq,
            ack: s.ack,
            flags: s.flags,
            options: s.options,
            payload: s.payload.to_vec(),
        }
    }
}

fn payloads(sent: &[Sent]) -> Vec<u8> {
    sent.iter().flat_map(|s| s.payload.clone()).collect()
}

/// Runs timers until the engine has none left before `limit`.
fn run_timers(e: &mut Engine, limit: u64) {
    while let Some(at) = e.next_deadline().filter(|&at| at <= limit) {
        e.on_timer(at);
    }
}

/// An engine past the handshake of a session from port 40000, with its SYN-ACK answered.
fn established(cfg: Config, mss: u16, window: u16) -> Engine {
    let mut e = Engine::new(cfg);
    handshake(&mut e, 0, 40000);
    e.on_reply(1_000, &syn_ack(ep(CLIENT, 40000), mss, window, 5000));
    sent(&mut e);
    e
}

#[test]
fn the_client_syn_is_replayed_to_the_target_with_its_isn_and_options() {
    let mut e = Engine::new(config());
    e.on_captured(0, Link::Ip, &captured(40000, SYN, CLIENT_ISN, 0, syn_options(100).as_bytes(), &[]));
    assert_eq!(e.outbox().events, vec![Event::Own(ep(CLIENT, 40000))], "the intercepts learn the flow is ours");
    let s = sent(&mut e);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].src, s[0].dst, s[0].seq, s[0].flags), (ep(CLIENT, 40000), target(), SeqNum(CLIENT_ISN), SYN));
    assert_eq!((s[0].options.mss, s[0].options.window_scale, s[0].options.sack_permitted), (Some(1460), Some(7), true));
    assert!(s[0].options.timestamps.is_some());
}

#[test]
fn packets_of_no_mapping_are_ignored() {
    let mut e = Engine::new(config());
    let mut other = captured(40000, SYN, 1, 0, &[], &[]);
    other[22..24].copy_from_slice(&443u16.to_be_bytes()); // destination port (checksum is not checked)
    e.on_captured(0, Link::Ip, &other);
    assert!(sent(&mut e).is_empty());
    assert_eq!(e.counters().captured_unmapped, 1);
}

#[test]
fn the_syn_ack_is_acknowledged_by_the_waiting_request_and_acks_are_mapped_into_the_target_sequence_space() {
    let mut e = Engine::new(config());
    handshake(&mut e, 0, 40000);
    e.on_captured(10, Link::Ip, &data(40000, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(sent(&mut e).len(), 1, "only the SYN until the target answers");
    e.on_reply(1_000, &syn_ack(ep(CLIENT, 40000), 1460, 65535, 5000));
    let s = sent(&mut e);
    assert_eq!(s.len(), 1, "the request carries the acknowledgement: no bare ACK before it");
    assert_eq!(s[0].flags, ACK | PSH);
    assert_eq!(s[0].seq, SeqNum(CLIENT_ISN.wrapping_add(1)), "the client's sequence numbers are kept");
    assert_eq!(s[0].ack, SeqNum(TARGET_ISN + 1));
    assert_eq!(s[0].payload, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(s[0].options.timestamps.map(|(_, ecr)| ecr), Some(5000), "echoes the target's TSval");
}

#[test]
fn with_nothing_to_send_the_syn_ack_and_the_answer_get_bare_acks() {
    let mut e = Engine::new(config());
    handshake(&mut e, 0, 40000);
    sent(&mut e);
    let c = ep(CLIENT, 40000);
    e.on_reply(1_000, &syn_ack(c, 1460, 65535, 5000));
    let s = sent(&mut e);
    assert_eq!((s.len(), s[0].flags, s[0].ack, s[0].payload.len()), (1, ACK, SeqNum(TARGET_ISN + 1), 0));
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    sent(&mut e);
    // The answer comes; the next request is not captured yet.
    e.on_reply(3_000, &reply(c, 18, 0, 300, PSH));
    let s = sent(&mut e);
    assert_eq!((s.len(), s[0].flags, s[0].ack), (1, ACK, SeqNum(TARGET_ISN + 1 + 300)), "{s:?}");
}

#[test]
fn the_next_request_waits_until_the_target_took_and_answered_the_previous_one() {
    let mut e = established(config(), 1460, 65535);
    let c = ep(CLIENT, 40000);
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"first"));
    e.on_captured(2_000, Link::Ip, &data(40000, 5, 300, b"second")); // after a 300-byte answer
    assert_eq!(payloads(&sent(&mut e)), b"first");
    assert_eq!(e.counters().requests_sent, 1);
    e.on_reply(3_000, &reply(c, 5, 0, 0, 0)); // took it
    assert!(sent(&mut e).is_empty(), "taken but not answered");
    e.on_reply(3_100, &reply(c, 5, 0, 200, PSH));
    assert_eq!(sent(&mut e).iter().filter(|s| !s.payload.is_empty()).count(), 0, "200 of 300 bytes");
    e.on_reply(3_200, &reply(c, 5, 200, 100, PSH));
    let s = sent(&mut e);
    assert_eq!(payloads(&s), b"second");
    assert_eq!(s.last().unwrap().ack, SeqNum(TARGET_ISN + 1 + 300), "acknowledges the whole answer");
    assert_eq!(e.counters().requests_sent, 2);
}

#[test]
fn a_shorter_answer_opens_the_gate_after_it_goes_quiet() {
    let mut e = established(config(), 1460, 65535);
    let c = ep(CLIENT, 40000);
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"first"));
    e.on_captured(2_000, Link::Ip, &data(40000, 5, 300, b"second"));
    sent(&mut e);
    e.on_reply(3_000, &reply(c, 5, 0, 100, PSH));
    assert!(payloads(&sent(&mut e)).is_empty());
    let quiet = config().answer_quiet_us;
    let at = e.next_deadline().unwrap();
    assert!(at <= 3_000 + quiet);
    e.on_timer(3_000 + quiet);
    assert_eq!(payloads(&sent(&mut e)), b"second");
    assert_eq!(e.exchanges().totals(), (0, 1, 0, 0), "counted short");
}

#[test]
fn without_waiting_requests_go_as_captured() {
    let mut cfg = config();
    cfg.wait_for_response = false;
    let mut e = established(cfg, 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"first"));
    e.on_captured(2_000, Link::Ip, &data(40000, 5, 300, b"second"));
    assert_eq!(payloads(&sent(&mut e)), b"firstsecond");
}

#[test]
fn super_segments_are_split_to_the_target_mss_and_the_window_is_respected() {
    let mut e = established(config(), 1000, 2500);
    let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, &big));
    let s = sent(&mut e);
    assert!(s.iter().all(|p| p.payload.len() <= 1000 - 12), "MSS less the timestamp option");
    assert_eq!(payloads(&s).len(), 2500, "no more than the window");
    e.on_reply(3_000, &ReplyFacts { window: 2500, ..reply(ep(CLIENT, 40000), 2500, 0, 0, 0) });
    let mut all = payloads(&s);
    all.extend(payloads(&sent(&mut e)));
    assert_eq!(all.len(), 5000);
    assert_eq!(all[..], big[..5000]);
}

#[test]
fn a_target_mss_larger_than_the_transmit_path_carries_gets_segments_that_fit() {
    let mut cfg = config();
    cfg.max_packet = 4096 - 256 - 14; // an AF_XDP frame less the XDP headroom and Ethernet header
    let mut e = established(cfg, 8960, 65535);
    let big: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, &big));
    let s = sent(&mut e);
    let largest = s.iter().map(|p| p.payload.len()).max().unwrap();
    assert_eq!(largest, 3826 - 40 - 12, "the packet, less IPv4, TCP and the timestamp option");
    assert_eq!(payloads(&s)[..], big[..], "every byte, in order");
}

#[test]
fn unacknowledged_data_is_retransmitted_with_backoff_until_the_give_up_limit() {
    let mut cfg = config();
    cfg.max_retransmits = 3;
    let mut e = established(cfg, 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"lost"));
    sent(&mut e);
    let mut times = Vec::new();
    while let Some(at) = e.next_deadline() {
        e.on_timer(at);
        let s = sent(&mut e);
        if s.iter().any(|p| p.payload == b"lost") {
            times.push(at);
        }
        if s.iter().any(|p| p.flags & RST != 0) {
            break;
        }
    }
    assert_eq!(times.len(), 3);
    assert!(times[2] - times[1] >= 2 * (times[1] - times[0]) - 1, "backoff doubles: {times:?}");
    assert_eq!(e.counters().sessions_gave_up, 1);
    assert_eq!(e.active_sessions(), 0);
}

#[test]
fn duplicated_and_reordered_captures_are_sent_once_in_order() {
    let mut cfg = config();
    cfg.wait_for_response = false;
    let mut e = established(cfg, 1460, 65535);
    e.on_captured(2_000, Link::Ip, &data(40000, 6, 0, b"world"));
    assert!(payloads(&sent(&mut e)).is_empty(), "a hole: nothing to send yet");
    e.on_captured(2_001, Link::Ip, &data(40000, 0, 0, b"hello "));
    e.on_captured(2_002, Link::Ip, &data(40000, 0, 0, b"hello "));
    e.on_captured(2_003, Link::Ip, &data(40000, 6, 0, b"world"));
    assert_eq!(payloads(&sent(&mut e)), b"hello world");
}

#[test]
fn sessions_captured_mid_stream_get_a_fabricated_handshake_unless_only_complete_ones_are_wanted() {
    let mut e = Engine::new(config());
    e.on_captured(0, Link::Ip, &data(40000, 100, 0, b"mid"));
    let s = sent(&mut e);
    assert_eq!(s[0].flags, SYN);
    assert_eq!(s[0].seq, SeqNum(CLIENT_ISN.wrapping_add(100)), "ISN just before the first byte seen");
    let mut only = config();
    only.only_complete = true;
    let mut e = Engine::new(only);
    e.on_captured(0, Link::Ip, &data(40000, 100, 0, b"mid"));
    assert!(sent(&mut e).is_empty());
    assert_eq!(e.counters().sessions_skipped, 1);
}

#[test]
fn a_session_awaits_an_ack_while_anything_it_sent_is_unacknowledged() {
    let mut e = Engine::new(config());
    handshake(&mut e, 0, 40000);
    let syn = sent(&mut e).remove(0);
    assert_eq!((e.active_sessions(), e.sessions_awaiting_ack()), (1, 1), "the SYN is in flight");
    e.on_reply(10, &syn_ack(syn.src, 1460, 64240, 1));
    sent(&mut e);
    assert_eq!(
        (e.active_sessions(), e.sessions_awaiting_ack()),
        (1, 0),
        "established, nothing in flight: it only idles"
    );
    e.on_captured(20, Link::Ip, &data(40000, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    sent(&mut e);
    assert_eq!(e.sessions_awaiting_ack(), 1, "the request is in flight");
}

#[test]
fn sessions_beyond_the_opening_limit_wait_their_turn_in_order() {
    let mut c = config();
    c.max_opening = 2;
    let mut e = Engine::new(c);
    for port in [40000, 40001, 40002, 40003] {
        handshake(&mut e, 0, port);
        e.on_captured(0, Link::Ip, &data(port, 0, 0, b"GET / HTTP/1.1\r\n\r\n"));
    }
    let syns: Vec<_> = sent(&mut e).into_iter().filter(|p| p.flags == SYN).collect();
    assert_eq!(syns.iter().map(|p| p.src.port).collect::<Vec<_>>(), [40000, 40001], "two open, two wait");
    assert_eq!((e.held_sessions(), e.counters().sessions_queued, e.counters().queued_peak), (2, 2, 2));

    // The first is answered: its request goes, but until the request is acknowledged the
    // session still occupies the test server's queues.
    e.on_reply(10, &syn_ack(syns[0].src, 1460, 64240, 1));
    assert!(sent(&mut e).iter().all(|p| p.flags != SYN));
    e.on_reply(20, &reply(syns[0].src, 18, 0, 0, 0));
    assert_eq!(sent(&mut e).iter().filter(|p| p.flags == SYN).map(|p| p.src.port).collect::<Vec<_>>(), [40002]);

    // A session that ends (given up, refused) frees its place too.
    e.on_reply(30, &ReplyFacts { flags: RST | ACK, ..syn_ack(syns[1].src, 1460, 64240, 1) });
    assert_eq!(sent(&mut e).iter().filter(|p| p.flags == SYN).map(|p| p.src.port).collect::<Vec<_>>(), [40003]);
    assert_eq!(e.held_sessions(), 0);
}

#[test]
fn a_reset_of_no_live_session_starts_nothing() {
    let mut e = Engine::new(config());
    for port in 40000..40100 {
        e.on_captured(0, Link::Ip, &captured(port, RST | ACK, 5, 6, &[], &[]));
    }
    assert!(sent(&mut e).is_empty());
    assert_eq!(e.active_sessions(), 0);
    let c = e.counters();
    assert_eq!((c.captured, c.captured_stray_resets, c.sessions_started), (100, 100, 0));
    // The 4-tuple is not remembered as declined: its next connection replays.
    handshake(&mut e, 1, 40000);
    assert_eq!(sent(&mut e)[0].flags, SYN);
}

#[test]
fn client_fin_is_replayed_after_the_data_and_the_session_completes() {
    let mut e = established(config(), 1460, 65535);
    let c = ep(CLIENT, 40000);
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"bye"));
    e.on_captured(2_000, Link::Ip, &captured(40000, FIN | ACK, CLIENT_ISN.wrapping_add(4), ONLINE_ISN + 1, &[], &[]));
    let s = sent(&mut e);
    assert_eq!(payloads(&s), b"bye");
    // No answer came between the data and the FIN in the capture, so the FIN follows at once.
    let fins: Vec<_> = s.iter().filter(|p| p.flags & FIN != 0).map(|p| p.seq).collect();
    assert_eq!(fins, vec![SeqNum(CLIENT_ISN.wrapping_add(4))]);
    assert_eq!(s.last().unwrap().flags & FIN, FIN, "after the data");
    e.on_reply(3_000, &reply(c, 4, 0, 0, 0));
    assert_eq!(e.counters().sessions_completed, 1, "the whole client stream was taken");
    e.on_reply(4_000, &reply(c, 4, 0, 0, FIN));
    assert_eq!(e.counters().sessions_completed, 1);
    // Like TIME_WAIT: a retransmitted FIN (our last ACK was lost) is acknowledged again...
    sent(&mut e);
    e.on_reply(5_000, &reply(c, 4, 0, 0, FIN));
    assert_eq!(sent(&mut e).iter().map(|p| p.flags).collect::<Vec<_>>(), vec![ACK]);
    // ...until the linger ends, and the flow is released.
    run_timers(&mut e, 20_000_000);
    assert_eq!(e.active_sessions(), 0);
    assert!(e.outbox().events.contains(&Event::Disown(c)));
}

#[test]
fn client_rst_is_replayed_and_target_rst_ends_the_session() {
    let mut e = established(config(), 1460, 65535);
    e.on_captured(2_000, Link::Ip, &captured(40000, RST | ACK, CLIENT_ISN.wrapping_add(1), ONLINE_ISN + 1, &[], &[]));
    assert!(sent(&mut e).iter().any(|p| p.flags & RST != 0));
    assert_eq!((e.counters().sessions_reset, e.active_sessions()), (1, 0));

    let mut e = established(config(), 1460, 65535);
    e.on_reply(2_000, &reply(ep(CLIENT, 40000), 0, 0, 0, RST));
    assert_eq!((e.counters().sessions_reset, e.active_sessions()), (1, 0));
}

#[test]
fn a_reset_outside_the_receive_window_is_another_incarnations_and_ends_nothing() {
    let mut e = established(config(), 1460, 65535);
    let c = ep(CLIENT, 40000);
    // The connection this endpoint had before: its sequence numbers are far from ours.
    e.on_reply(2_000, &ReplyFacts { seq: SeqNum(TARGET_ISN.wrapping_add(0x4000_0000)), ..reply(c, 0, 0, 0, RST) });
    e.on_reply(2_000, &ReplyFacts { seq: SeqNum(TARGET_ISN.wrapping_sub(5)), ..reply(c, 0, 0, 0, RST) });
    assert_eq!((e.counters().sessions_reset, e.active_sessions()), (0, 1));
    // Its own, at what it acknowledges, ends it.
    e.on_reply(2_000, &reply(c, 0, 0, 0, RST));
    assert_eq!((e.counters().sessions_reset, e.active_sessions()), (1, 0));
}

#[test]
fn a_target_that_closes_first_ends_the_session_cleanly() {
    let mut e = established(config(), 1460, 65535);
    let c = ep(CLIENT, 40000);
    e.on_reply(2_000, &reply(c, 0, 0, 10, FIN | PSH));
    let s = sent(&mut e);
    assert!(s.iter().any(|p| p.flags & FIN != 0 && p.ack == SeqNum(TARGET_ISN + 1 + 11)), "{s:?}");
    e.on_reply(3_000, &reply(c, 1, 11, 0, 0));
    assert_eq!(e.counters().sessions_completed, 1);
    run_timers(&mut e, 20_000_000);
    assert_eq!(e.active_sessions(), 0);
}

#[test]
fn a_target_that_closed_first_while_our_fin_is_unacknowledged_never_spins_the_timers() {
    let mut e = established(config(), 1460, 65535);
    let c = ep(CLIENT, 40000);
    // The client's request, then its FIN after it had the 10-byte answer: a request mark at the FIN.
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"GET /"));
    e.on_captured(2_000, Link::Ip, &captured(40000, FIN | ACK, CLIENT_ISN.wrapping_add(6), ONLINE_ISN + 11, &[], &[]));
    e.on_reply(3_000, &reply(c, 5, 0, 10, PSH | FIN)); // answer and close; our FIN goes out
    assert!(sent(&mut e).iter().any(|p| p.flags & FIN != 0));
    // Our FIN's ACK is lost: time passes beyond every pacing fallback.
    let mut now = 3_000;
    for _ in 0..100 {
        let at = e.next_deadline().expect("the FIN's retransmission timer");
        assert!(at > now, "a timer at {at} is not after the {now} it was armed at");
        now = at;
        e.on_timer(now);
        if e.active_sessions() == 0 {
            break;
        }
    }
}

#[test]
fn idle_sessions_time_out() {
    let mut cfg = config();
    cfg.idle_timeout_us = 5_000_000;
    let mut e = established(cfg, 1460, 65535);
    e.on_timer(4_000_000);
    assert_eq!(e.active_sessions(), 1);
    e.on_timer(6_002_000);
    assert_eq!((e.counters().sessions_timed_out, e.active_sessions()), (1, 0));
}

#[test]
fn a_reused_four_tuple_starts_a_fresh_session() {
    let mut e = established(config(), 1460, 65535);
    e.on_captured(2_000, Link::Ip, &captured(40000, SYN, 12345, 0, syn_options(900).as_bytes(), &[]));
    let s = sent(&mut e);
    assert_eq!(s.last().map(|p| (p.flags, p.seq)), Some((SYN, SeqNum(12345))));
    assert_eq!(e.counters().sessions_started, 2);
    assert_eq!(e.active_sessions(), 1);
    assert_eq!(e.isn_of(&ep(CLIENT, 40000)), Some(SeqNum(12345)));
}

#[test]
fn a_cleanly_closed_session_lingers_as_time_wait_until_a_new_connection_reuses_its_four_tuple() {
    let mut e = established(config(), 1460, 65535);
    let c = ep(CLIENT, 40000);
    e.on_captured(2_000, Link::Ip, &data(40000, 0, 0, b"GET /"));
    e.on_captured(2_000, Link::Ip, &captured(40000, FIN | ACK, CLIENT_ISN.wrapping_add(6), ONLINE_ISN + 11, &[], &[]));
    e.on_reply(3_000, &reply(c, 5, 0, 10, PSH)); // the answer: our FIN goes
    e.on_reply(3_100, &reply(c, 6, 10, 0, FIN)); // our FIN acknowledged, and theirs
    let last_ack = sent(&mut e).pop().expect("our last ACK");
    assert_eq!(last_ack.flags, ACK);
    assert_eq!((e.counters().sessions_completed, e.active_sessions()), (1, 1), "it lingers");
    // A late ACK needs no answer; a retransmitted FIN gets the same acknowledgement again, with
    // our clock's timestamp and the test server's last one (from its SYN-ACK) echoed.
    e.on_reply(4_000, &reply(c, 6, 11, 0, 0));
    assert_eq!(sent(&mut e), vec![]);
    e.on_reply(5_000, &reply(c, 6, 10, 0, FIN));
    let again = sent(&mut e);
    assert_eq!(
        again.iter().map(|p| (p.flags, p.seq, p.ack)).collect::<Vec<_>>(),
        vec![(ACK, last_ack.seq, last_ack.ack)]
    );
    assert_eq!(again[0].options.timestamps, Some((5, 5000)));
    assert!(!e.outbox().events.contains(&Event::Disown(c)), "its replay endpoint stays taken");
    // The client connects again from the same port: the linger ends, a fresh session starts.
    e.on_captured(6_000, Link::Ip, &captured(40000, SYN, 12345, 0, syn_options(900).as_bytes(), &[]));
    assert!(e.outbox().events.contains(&Event::Disown(c)));
    assert_eq!(e.isn_of(&c), Some(SeqNum(12345)));
    assert_eq!((e.counters().sessions_started, e.active_sessions()), (2, 1));
}

#[test]
fn a_new_connection_on_a_live_sessions_four_tuple_leaves_it_to_finish_from_its_own_endpoint() {
    let mut e = Engine::new(config());
    let c = ep(CLIENT, 40000);
    handshake(&mut e, 0, 40000);
    e.on_captured(0, Link::Ip, &data(40000, 0, 0, b"GET /first"));
    // Read at full speed, the client's next connection from the same port comes before the
    // test server answered the first one's SYN.
    e.on_captured(10, Link::Ip, &captured(40000, SYN, 777, 0, syn_options(900).as_bytes(), &[]));
    let syns = sent(&mut e);
    assert_eq!(syns.len(), 2, "{syns:?}");
    let (first, second) = (syns[0].src, syns[1].src);
    assert_eq!(first, c);
    assert_ne!(second, c, "the new connection takes another replay endpoint");
    assert_eq!(syns[1].seq, SeqNum(777));
    // The first still gets its answer, and sends its request.
    e.on_reply(1_000, &syn_ack(c, 1460, 65535, 5000));
    let s = sent(&mut e);
    assert_eq!(payloads(&s), b"GET /first", "{s:?}");
    assert!(s.iter().all(|p| p.src == c));
    assert_eq!((e.counters().sessions_started, e.active_sessions()), (2, 2));
}

#[test]
fn session_and_memory_bounds_shed_and_count() {
    let mut cfg = config();
    cfg.max_sessions = 2;
    let mut e = Engine::new(cfg);
    for port in 40000..40004 {
        handshake(&mut e, 0, port);
    }
    assert_eq!((e.active_sessions(), e.counters().sessions_shed), (2, 2));

    let mut cfg = config();
    cfg.max_buffered_bytes = 1000;
    let mut e = Engine::new(cfg);
    handshake(&mut e, 0, 40000);
    handshake(&mut e, 0, 40001);
    e.on_captured(1, Link::Ip, &data(40000, 0, 0, &[1; 600]));
    e.on_captured(1, Link::Ip, &data(40001, 0, 0, &[2; 600]));
    assert_eq!(e.counters().sessions_shed, 1);
    assert!(e.buffered_bytes() <= 1000);
}

#[test]
fn ipv6_sessions_are_replayed_over_ipv6() {
    let mut e = Engine::new(Config::new(parse_mappings("[fd00::1]:80-[fd00::2]:8080").unwrap()));
    let (client, online) = (
        Endpoint::v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9], 40000),
        Endpoint::from("[fd00::1]:80".parse::<SocketAddr>().unwrap()),
    );
    let mut syn = Vec::new();
    emit::write(
        &mut syn,
        &emit::Segment {
            src: client,
            dst: online,
            seq: SeqNum(1),
            ack: SeqNum(0),
            flags: SYN,
            window: 1,
            options: &[],
            payload: &[],
        },
    );
    e.on_captured(0, Link::Ip, &syn);
    let s = sent(&mut e);
    assert_eq!((s[0].src, s[0].dst), (client, Endpoint::from("[fd00::2]:8080".parse::<SocketAddr>().unwrap())));
    assert_eq!(e.outbox().packets().count(), 0);
}

#[test]
fn a_mapping_that_names_an_online_address_takes_only_that_address_and_a_port_only_one_the_rest() {
    let mut e = Engine::new(Config::new(parse_mappings("10.100.1.7:80-10.100.2.7:8080, 80-10.100.2.2:8080").unwrap()));
    let syn = |client_port: u16, online: Endpoint| {
        let mut p = Vec::new();
        emit::write(
            &mut p,
            &emit::Segment {
                src: ep(CLIENT, client_port),
                dst: online,
                seq: SeqNum(1),
                ack: SeqNum(0),
                flags: SYN,
                window: 1,
                options: &[],
                payload: &[],
            },
        );
        p
    };
    e.on_captured(0, Link::Ip, &syn(40000, ep(Ipv4Addr::new(10, 100, 1, 7), 80)));
    e.on_captured(0, Link::Ip, &syn(40001, ep(ONLINE, 80)));
    let s = sent(&mut e);
    assert_eq!(s.iter().map(|p| p.dst).collect::<Vec<_>>(), [ep(Ipv4Addr::new(10, 100, 2, 7), 8080), target()]);
    e.on_captured(0, Link::Ip, &syn(40002, ep(ONLINE, 81)));
    assert!(sent(&mut e).is_empty(), "no mapping for port 81");
    assert_eq!(e.counters().captured_unmapped, 1);
}

#[test]
fn multiply_replays_each_session_n_times_from_distinct_rewritten_clients() {
    let mut cfg = config();
    cfg.multiply = 3;
    cfg.client_addrs = Some("10.200.0.1-10.200.0.2".parse().unwrap());
    let mut e = Engine::new(cfg);
    e.on_captured(0, Link::Ip, &captured(40000, SYN, CLIENT_ISN, 0, &[], &[]));
    let s = sent(&mut e);
    assert_eq!(s.len(), 3);
    let sources: std::collections::HashSet<_> = s.iter().map(|p| p.src).collect();
    assert_eq!(sources.len(), 3, "three distinct replayed clients: {sources:?}");
    for p in &s {
        let ip = IpAddr::from(std::net::Ipv6Addr::from(p.src.addr).to_ipv4_mapped().unwrap());
        assert!(["10.200.0.1", "10.200.0.2"].contains(&ip.to_string().as_str()));
    }
}

/// SYNs and data segments sent, by replayed source port.
fn syn_ports(s: &[Sent]) -> std::collections::BTreeSet<u16> {
    s.iter().filter(|p| p.flags & SYN != 0).map(|p| p.src.port).collect()
}

#[test]
fn a_new_multiply_applies_to_flows_that_start_after_it_and_in_flight_ones_keep_theirs() {
    let mut cfg = config();
    cfg.wait_for_response = false;
    let mut e = Engine::new(cfg);
    handshake(&mut e, 0, 40000); // flow A under -n 1
    assert_eq!(syn_ports(&sent(&mut e)).len(), 1);

    e.set_load(100, 3);
    e.on_captured(1_000, Link::Ip, &data(40000, 0, 0, b"A's request"));
    assert!(syn_ports(&sent(&mut e)).is_empty(), "no copy of A starts in its middle");
    assert_eq!(e.active_sessions(), 1);
    handshake(&mut e, 2_000, 40001); // flow B under -n 3
    let b = syn_ports(&sent(&mut e));
    assert_eq!(b.len(), 3, "{b:?}");

    e.set_load(100, 1);
    for &port in &b {
        e.on_reply(3_000, &syn_ack(ep(CLIENT, port), 1460, 65535, 1));
    }
    sent(&mut e);
    e.on_captured(4_000, Link::Ip, &data(40001, 0, 0, b"B's request"));
    let to = |s: &[Sent]| {
        s.iter().filter(|p| !p.payload.is_empty()).map(|p| p.src.port).collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(to(&sent(&mut e)), b, "B keeps its three copies");
    handshake(&mut e, 5_000, 40002); // flow C under -n 1 again
    assert_eq!(syn_ports(&sent(&mut e)).len(), 1);
    assert_eq!(e.active_sessions(), 5);
}

#[test]
fn a_new_rate_applies_to_flows_that_start_after_it() {
    let mut cfg = config();
    cfg.wait_for_response = false;
    let mut e = Engine::new(cfg);
    for port in 20000..20100 {
        handshake(&mut e, 0, port);
    }
    assert_eq!(syn_ports(&sent(&mut e)).len(), 100);
    e.set_load(10, 1);
    for port in 20000..20100 {
        e.on_reply(1, &syn_ack(ep(CLIENT, port), 1460, 65535, 1));
        e.on_captured(2, Link::Ip, &data(port, 0, 0, b"x"));
    }
    let with_data = sent(&mut e).iter().filter(|p| !p.payload.is_empty()).count();
    assert_eq!(with_data, 100, "flows in progress go on whole");
    for port in 30000..31000 {
        handshake(&mut e, 3, port);
    }
    let new = syn_ports(&sent(&mut e)).len();
    assert!((50..=150).contains(&new), "about 10 % of the new flows: {new}");
}

#[test]
fn copies_that_would_collide_move_to_a_free_port() {
    let mut cfg = config();
    cfg.multiply = 2;
    cfg.port_shift = 1;
    let mut e = Engine::new(cfg);
    // Copy 1 of port 40000 wants 40001, which the original of port 40001 holds.
    e.on_captured(0, Link::Ip, &captured(40001, SYN, 1, 0, &[], &[]));
    e.on_captured(0, Link::Ip, &captured(40000, SYN, 1, 0, &[], &[]));
    let ports: std::collections::HashSet<u16> = sent(&mut e).iter().map(|p| p.src.port).collect();
    assert_eq!(ports.len(), 4);
    assert!(e.counters().port_probes >= 1);
}

#[test]
fn a_worker_replays_only_from_its_own_port_class() {
    let mut cfg = config();
    cfg.multiply = 3;
    cfg.ports = super::rewrite::PortClass::new(1, 2);
    let mut e = Engine::new(cfg);
    for port in [40000, 40001, 40002] {
        e.on_captured(0, Link::Ip, &captured(port, SYN, 1, 0, &[], &[]));
    }
    let ports: Vec<u16> = sent(&mut e).iter().map(|p| p.src.port).collect();
    assert_eq!(ports.len(), 9);
    assert!(ports.iter().all(|p| p % 2 == 1), "odd ports only: {ports:?}");
    assert_eq!(ports.iter().collect::<std::collections::HashSet<_>>().len(), 9, "all distinct: {ports:?}");
    assert!(ports.contains(&40001), "a port already in the class is kept");
}

#[test]
fn sampling_replays_a_session_whole_or_not_at_all() {
    let mut cfg = config();
    cfg.sample_percent = 50;
    cfg.wait_for_response = false;
    let mut e = Engine::new(cfg);
    for port in 20000..20200 {
        handshake(&mut e, 0, port);
        e.on_reply(1, &syn_ack(ep(CLIENT, port), 1460, 65535, 1));
        e.on_captured(2, Link::Ip, &data(port, 0, 0, b"x"));
    }
    let s = sent(&mut e);
    let syns: std::collections::HashSet<u16> = s.iter().filter(|p| p.flags & SYN != 0).map(|p| p.src.port).collect();
    let data: std::collections::HashSet<u16> = s.iter().filter(|p| !p.payload.is_empty()).map(|p| p.src.port).collect();
    assert_eq!(syns, data, "data only for sampled sessions, all of them");
    assert!((70..130).contains(&syns.len()), "{} of 200", syns.len());
}

#[test]
fn timestamps_never_go_backwards_within_a_session() {
    let mut cfg = config();
    cfg.wait_for_response = false;
    let mut e = established(cfg, 1460, 65535);
    for i in 0..5u32 {
        e.on_captured(10_000 + i as u64 * 7_000, Link::Ip, &data(40000, i, 0, b"x"));
    }
    let ts: Vec<u32> = sent(&mut e).iter().filter_map(|p| p.options.timestamps.map(|(v, _)| v)).collect();
    assert_eq!(ts.len(), 5);
    assert!(ts.windows(2).all(|w| w[1] >= w[0]), "{ts:?}");
}

#[test]
fn the_timer_wheel_holds_about_one_entry_per_session_however_many_packets() {
    let mut cfg = config();
    cfg.wait_for_response = false;
    let mut e = established(cfg, 1460, 65535);
    let c = ep(CLIENT, 40000);
    for i in 0..10_000u32 {
        e.on_captured(2_000 + i as u64, Link::Ip, &data(40000, i, 0, b"x"));
        e.on_reply(2_000 + i as u64, &reply(c, i + 1, 0, 0, 0));
        e.outbox().clear();
    }
    assert!(e.timer_entries() < 10, "{} timer entries for one session", e.timer_entries());
}

#[test]
fn sessions_that_end_a_millisecond_apart_share_their_timer_wake_ups() {
    // At recorded pace: each session opens, asks, is answered and closes a millisecond after
    // the one before. Their lingers, and the timers they left behind, come due then too.
    const SESSIONS: u16 = 200;
    let mut e = Engine::new(config());
    for i in 0..SESSIONS {
        let (port, t) = (40000 + i, u64::from(i) * 1_000);
        let c = ep(CLIENT, port);
        handshake(&mut e, t, port);
        e.on_reply(t + 100, &syn_ack(c, 1460, 65535, 5000));
        e.on_captured(t + 100, Link::Ip, &data(port, 0, 0, b"GET"));
        e.on_captured(
            t + 100,
            Link::Ip,
            &captured(port, FIN | ACK, CLIENT_ISN.wrapping_add(4), ONLINE_ISN + 1, &[], &[]),
        );
        e.on_reply(t + 300, &reply(c, 4, 0, 0, FIN));
        sent(&mut e);
    }
    assert_eq!((e.counters().sessions_completed, e.active_sessions()), (SESSIONS.into(), SESSIONS.into()));
    let mut wake_ups = 0;
    while let Some(at) = e.next_deadline() {
        e.on_timer(at);
        wake_ups += 1;
    }
    assert_eq!(e.active_sessions(), 0, "every linger ended");
    assert!(wake_ups <= 20, "{wake_ups} wake-ups for {SESSIONS} lingers ending a millisecond apart");
}

#[test]
fn shutdown_resets_what_is_open_on_the_target() {
    let mut e = established(config(), 1460, 65535);
    e.shutdown(9_000);
    assert!(sent(&mut e).iter().any(|p| p.flags & RST != 0));
    assert_eq!((e.active_sessions(), e.counters().sessions_timed_out), (0, 1));
}

mod comparison;
mod exchanges;
mod simulated;

#[test]
fn a_batch_of_replies_does_what_the_same_replies_one_at_a_time_do() {
    let ports: Vec<u16> = (40000..40020).collect();
    let mut batch: Vec<ReplyFacts> = ports.iter().map(|&p| syn_ack(ep(CLIENT, p), 1460, 65535, 5000)).collect();
    // A session the batch resets, answered again later in the same batch (and lookahead chunk),
    // and a client nobody replays.
    batch.insert(5, reply(ep(CLIENT, 40003), 0, 0, 0, RST));
    batch.insert(9, reply(ep(CLIENT, 40003), 0, 0, 0, 0));
    batch.push(reply(ep(CLIENT, 1), 0, 0, 0, 0));
    let start = || {
        let mut e = Engine::new(config());
        ports.iter().for_each(|&p| handshake(&mut e, 0, p));
        sent(&mut e);
        e
    };
    let (mut one_by_one, mut batched) = (start(), start());
    batch.iter().for_each(|f| one_by_one.on_reply(1_000, f));
    batched.on_replies(1_000, &batch);
    let expected = sent(&mut one_by_one);
    assert_eq!(expected.len(), ports.len(), "each session answers its SYN-ACK (the reset one before its reset)");
    assert_eq!(sent(&mut batched), expected);
    let counts = |e: &Engine| (e.counters().sessions_reset, e.counters().replies_unmatched, e.active_sessions());
    assert_eq!(counts(&batched), (1, 2, ports.len() - 1));
    assert_eq!(counts(&batched), counts(&one_by_one));
}

#[test]
fn a_batch_of_captured_packets_does_what_the_same_packets_one_at_a_time_do() {
    let ports: Vec<u16> = (41000..41012).collect();
    let start = || {
        let mut e = Engine::new(config());
        ports.iter().for_each(|&p| handshake(&mut e, 0, p));
        ports.iter().for_each(|&p| e.on_reply(10, &syn_ack(ep(CLIENT, p), 1460, 65535, 5000)));
        sent(&mut e);
        e
    };
    // Requests of live sessions, a new session's SYN, and a reset among them: the lookahead
    // prefetches sessions that packets before them change or end.
    let mut packets: Vec<Vec<u8>> = ports.iter().map(|&p| data(p, 0, 0, b"GET / HTTP/1.1\r\n\r\n")).collect();
    packets.insert(3, captured(41005, RST | ACK, CLIENT_ISN.wrapping_add(1), ONLINE_ISN + 1, &[], &[]));
    packets.insert(6, captured(42000, SYN, CLIENT_ISN, 0, syn_options(100).as_bytes(), &[]));
    packets.push(captured(42000, ACK, CLIENT_ISN.wrapping_add(1), ONLINE_ISN + 1, &[], &[]));
    // Parsed once, when looked ahead at: a malformed packet counts as one where it stands.
    packets.insert(9, vec![0x45; 10]);
    // Longer than the lookahead, and shorter.
    for (packets, least) in [(&packets[..], ports.len() + 1), (&packets[..3], 3)] {
        let (mut one_by_one, mut batched) = (start(), start());
        packets.iter().for_each(|p| one_by_one.on_captured_round(20, 20, 0, Link::Ip, p));
        batched.on_captured_batch(20, 0, packets.iter().map(|p| (20, Link::Ip, p.as_slice())));
        let expected = sent(&mut one_by_one);
        assert!(expected.len() >= least, "requests, a reset and a SYN: {expected:?}");
        assert_eq!(sent(&mut batched), expected);
        assert_eq!(batched.active_sessions(), one_by_one.active_sessions());
        assert_eq!(batched.counters(), one_by_one.counters());
    }
}
