//! What the copier reports at exit besides its counters: per target, how the test server
//! answered (request by request, against production), its first-byte latency beside
//! production's, the same as JSON for `--summary-json`, and whether the run succeeded.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use copier_engine::exchange::{Exchanges, TargetExchanges};
use hdrhistogram::Histogram;
use serde_json::json;

use copier_user::runtime::worker::Shared;

/// The workers' records, summed per target.
pub fn exchanges(shared: &[Arc<Shared>]) -> Exchanges {
    let mut all = Exchanges::default();
    for s in shared {
        all.merge(&s.exchanges.lock().expect("not poisoned"));
    }
    all
}

/// `name=value` pairs of the exchanges, summed over targets, for the stats line.
pub fn pairs(e: &Exchanges) -> Vec<(&'static str, u64)> {
    let (full, short, none, none_online) = e.totals();
    let sum = |f: fn(&TargetExchanges) -> u64| e.targets().iter().map(f).sum::<u64>();
    vec![
        ("answered", full),
        ("answered_short", short),
        ("unanswered", none),
        ("unanswered_online", none_online),
        ("answer_timeouts", sum(|t| t.answer_timeouts)),
        ("refused", sum(|t| t.sessions_refused)),
        ("reset_by_target", sum(|t| t.sessions_reset_by_target)),
        ("stale_reset", sum(|t| t.stale_connections_reset)),
    ]
}

const QUANTILES: [(&str, f64); 3] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)];

fn latency_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".into();
    }
    let mut s = String::new();
    for (name, q) in QUANTILES {
        s += &format!("{name}={} ", h.value_at_quantile(q));
    }
    s + &format!("max={}", h.max())
}

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let mut v = json!({ "count": h.len(), "max": h.max() });
    for (name, q) in QUANTILES {
        v[name] = json!(h.value_at_quantile(q));
    }
    v
}

/// One line per target: `copier target ADDR: requests=… answered=… | latency_us target: … production: …`.
pub fn target_lines(e: &Exchanges) -> Vec<String> {
    e.targets()
        .iter()
        .map(|t| {
            format!(
                "copier target {}: requests={} answered={} answered_short={} unanswered={} unanswered_online={} \
                 answer_timeouts={} refused={} reset_by_target={} stale_reset={} | first-byte latency_us \
                 target: {} | production: {}",
                t.target,
                t.requests(),
                t.answered,
                t.answered_short,
                t.unanswered,
                t.unanswered_online,
                t.answer_timeouts,
                t.sessions_refused,
                t.sessions_reset_by_target,
                t.stale_connections_reset,
                latency_text(&t.target_latency_us),
                latency_text(&t.production_latency_us),
            )
        })
        .collect()
}

/// The summary as JSON: the counters, the totals users look at first, and one object per target.
pub fn json(counters: &[(&'static str, u64)], e: &Exchanges) -> serde_json::Value {
    let get = |name: &str| counters.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
    let (full, short, none, none_online) = e.totals();
    let targets: Vec<_> = e
        .targets()
        .iter()
        .map(|t| {
            json!({
                "target": t.target.to_string(),
                "requests": t.requests(),
                "requests_answered": t.answered,
                "requests_answered_short": t.answered_short,
                "requests_unanswered": t.unanswered,
                "requests_unanswered_online": t.unanswered_online,
                "answer_timeouts": t.answer_timeouts,
                "sessions_refused": t.sessions_refused,
                "sessions_reset_by_target": t.sessions_reset_by_target,
                "stale_connections_reset": t.stale_connections_reset,
                "latency_us": {
                    "target": latency_json(&t.target_latency_us),
                    "production": latency_json(&t.production_latency_us),
                },
            })
        })
        .collect();
    json!({
        "sessions": get("sessions"),
        "sessions_completed": get("completed"),
        "requests_sent": get("requests"),
        "requests_answered": full,
        "requests_answered_short": short,
        "requests_unanswered": none,
        "requests_unanswered_online": none_online,
        "counters": counters.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "targets": targets,
    })
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise") + "\n";
    std::fs::write(path, text).with_context(|| format!("writing the summary to {}", path.display()))
}

/// Why the run did not do its job, if it did not: the test server answered nothing (of the
/// requests sent, or, replaying a file, of its sessions: a test server that never completes a
/// handshake answers nothing either), or a capture file held nothing to replay.
pub fn failure(counters: &[(&'static str, u64)], e: &Exchanges, offline: bool) -> Option<String> {
    let get = |name: &str| counters.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
    let (full, short, _, _) = e.totals();
    let (sessions, requests) = (get("sessions"), get("requests"));
    if offline && sessions == 0 {
        return Some("the capture file held no session to replay (see unmapped, not_tcp and unparsed)".into());
    }
    if full + short == 0 && (requests > 0 || offline) {
        return Some(format!(
            "the test server answered nothing: {sessions} sessions, {requests} requests sent (is the route back \
             through the intercept's host in place, and the intercept connected?)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use common::endpoint::Endpoint;
    use copier_engine::exchange::Outcome;

    use super::*;

    fn record(outcomes: &[Outcome]) -> Exchanges {
        let mut e = Exchanges::default();
        let t = e.of(Endpoint::v4([10, 0, 0, 2], 8080));
        outcomes.iter().for_each(|&o| t.count(o));
        for us in [100, 200, 300, 10_000] {
            t.target_latency_us.record(us).unwrap();
        }
        e
    }

    #[test]
    fn a_run_fails_when_nothing_it_sent_was_answered() {
        let counters = [("requests", 3), ("sessions", 3)];
        assert!(failure(&counters, &record(&[Outcome::Unanswered; 3]), true).is_some());
        assert!(failure(&counters, &record(&[Outcome::Unanswered, Outcome::Short]), true).is_none());
        let silent = [("requests", 0), ("sessions", 20)];
        assert!(failure(&silent, &Exchanges::default(), true).is_some(), "no handshake completed");
        assert!(failure(&silent, &Exchanges::default(), false).is_none(), "live: nothing sent yet");
        assert!(failure(&[("requests", 0), ("sessions", 0)], &Exchanges::default(), false).is_none(), "live, idle");
        assert!(failure(&[("requests", 0), ("sessions", 0)], &Exchanges::default(), true).is_some(), "empty file");
    }

    #[test]
    fn the_json_summary_names_the_totals_and_each_target() {
        let e = record(&[Outcome::Full, Outcome::Full, Outcome::Unanswered]);
        let v = json(&[("sessions", 2), ("completed", 2), ("requests", 3)], &e);
        assert_eq!((v["requests_sent"].as_u64(), v["requests_answered"].as_u64()), (Some(3), Some(2)));
        assert_eq!(v["requests_unanswered"], 1);
        let t = &v["targets"][0];
        assert_eq!(t["target"], "10.0.0.2:8080");
        assert_eq!(t["latency_us"]["target"]["count"], 4);
        assert!(t["latency_us"]["target"]["p50"].as_u64().unwrap() >= 200);
        assert_eq!(t["latency_us"]["production"]["count"], 0);
        assert!(target_lines(&e)[0].contains("answered=2 answered_short=0 unanswered=1"));
    }
}
