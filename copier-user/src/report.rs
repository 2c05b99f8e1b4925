//! What the copier reports at exit besides its counters: per target, how the test server
//! answered (request by request, against production), its first-byte latency beside
//! production's, how its answers compared with production's (`--report DIR`: report.json), the
//! same as JSON for `--summary-json`, and whether the run succeeded.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use copier_engine::{
    compare::Kinds,
    exchange::{Comparison, Exchanges, TargetExchanges},
};
use hdrhistogram::Histogram;
use serde_json::json;

use copier_user::runtime::worker::Shared;

mod html;

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
        ("compared", sum(|t| t.comparison.compared)),
        ("different", sum(|t| t.comparison.different)),
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

/// ` | compared=… equal=… different=… (status=… body=…) not_compared=…`, if anything was.
fn comparison_text(c: &Comparison) -> String {
    if c.compared + c.not_compared == 0 {
        return String::new();
    }
    let kinds: Vec<String> =
        Kinds::ALL.iter().zip(c.by_kind).filter(|(_, n)| *n > 0).map(|((_, name), n)| format!("{name}={n}")).collect();
    let kinds = if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(" ")) };
    format!(
        " | compared={} equal={} different={}{kinds} not_compared={}",
        c.compared,
        c.equal(),
        c.different,
        c.not_compared
    )
}

fn comparison_json(c: &Comparison) -> serde_json::Value {
    let by_kind: serde_json::Map<_, _> =
        Kinds::ALL.iter().zip(c.by_kind).map(|((_, name), n)| (name.to_string(), json!(n))).collect();
    let groups: Vec<_> = c
        .groups
        .iter()
        .map(|(name, g)| json!({ "request": name, "compared": g.compared, "different": g.different }))
        .collect();
    let samples: Vec<_> = c
        .samples
        .iter()
        .map(|s| {
            json!({
                "request": s.request,
                "production": s.production,
                "target": s.target,
                "kinds": s.difference.kinds.names().collect::<Vec<_>>(),
                "headers": s.difference.headers,
            })
        })
        .collect();
    json!({
        "compared": c.compared,
        "equal": c.equal(),
        "different": c.different,
        "not_compared": c.not_compared,
        "different_by_kind": by_kind,
        "by_request": groups,
        "samples": samples,
    })
}

/// `--report DIR`'s report.json: per target its endpoint, the exchanges compared and how they
/// differ, latency beside production's, and a sample of differing exchanges (the same record
/// as the summary's).
pub fn report_json(e: &Exchanges, baseline: Option<SocketAddr>) -> serde_json::Value {
    let targets: Vec<_> = e.targets().iter().map(|t| target_json(t, baseline)).collect();
    json!({ "targets": targets })
}

/// Writes `dir`/report.json and `dir`/report.html, creating `dir`.
pub fn write_report(dir: &Path, e: &Exchanges, baseline: Option<SocketAddr>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the report directory {}", dir.display()))?;
    write_json(&dir.join("report.json"), &report_json(e, baseline))?;
    let page = dir.join("report.html");
    std::fs::write(&page, html::page(e, baseline)).with_context(|| format!("writing {}", page.display()))
}

fn is_baseline(t: &TargetExchanges, baseline: Option<SocketAddr>) -> bool {
    baseline.is_some_and(|b| SocketAddr::from(t.target) == b)
}

/// One line per target: `copier target ADDR: requests=… answered=… | latency_us target: … production: …`.
pub fn target_lines(e: &Exchanges, baseline: Option<SocketAddr>) -> Vec<String> {
    e.targets()
        .iter()
        .map(|t| {
            format!(
                "copier target {}{}: requests={} answered={} answered_short={} unanswered={} unanswered_online={} \
                 answer_timeouts={} refused={} reset_by_target={} stale_reset={} | first-byte latency_us \
                 target: {} | production: {}{}",
                t.target,
                if is_baseline(t, baseline) { " (baseline)" } else { "" },
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
                comparison_text(&t.comparison),
            )
        })
        .collect()
}

/// One target's record: its answers, how they compared with production's, and latencies.
fn target_json(t: &TargetExchanges, baseline: Option<SocketAddr>) -> serde_json::Value {
    json!({
        "target": t.target.to_string(),
        "baseline": is_baseline(t, baseline),
        "requests": t.requests(),
        "requests_answered": t.answered,
        "requests_answered_short": t.answered_short,
        "requests_unanswered": t.unanswered,
        "requests_unanswered_online": t.unanswered_online,
        "answer_timeouts": t.answer_timeouts,
        "sessions_refused": t.sessions_refused,
        "sessions_reset_by_target": t.sessions_reset_by_target,
        "stale_connections_reset": t.stale_connections_reset,
        "comparison": comparison_json(&t.comparison),
        "latency_us": {
            "target": latency_json(&t.target_latency_us),
            "production": latency_json(&t.production_latency_us),
        },
    })
}

/// The summary as JSON: the counters, the totals users look at first, and one object per target.
pub fn json(counters: &[(&'static str, u64)], e: &Exchanges, baseline: Option<SocketAddr>) -> serde_json::Value {
    let get = |name: &str| counters.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
    let (full, short, none, none_online) = e.totals();
    let targets: Vec<_> = e.targets().iter().map(|t| target_json(t, baseline)).collect();
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
        let v = json(&[("sessions", 2), ("completed", 2), ("requests", 3)], &e, None);
        assert_eq!((v["requests_sent"].as_u64(), v["requests_answered"].as_u64()), (Some(3), Some(2)));
        assert_eq!(v["requests_unanswered"], 1);
        let t = &v["targets"][0];
        assert_eq!(t["target"], "10.0.0.2:8080");
        assert_eq!(t["latency_us"]["target"]["count"], 4);
        assert!(t["latency_us"]["target"]["p50"].as_u64().unwrap() >= 200);
        assert_eq!(t["latency_us"]["production"]["count"], 0);
        assert!(target_lines(&e, None)[0].contains("answered=2 answered_short=0 unanswered=1"));
        assert!(!target_lines(&e, None)[0].contains("compared="), "nothing compared, nothing said");
    }

    #[test]
    fn the_report_names_each_differing_exchange() {
        use copier_engine::compare::{Answer, IgnoredHeaders};
        let mut e = record(&[Outcome::Full, Outcome::Full]);
        let t = e.of(Endpoint::v4([10, 0, 0, 2], 8080));
        let (ok, broken) = (&b"HTTP/1.1 200 OK\r\n\r\n"[..], &b"HTTP/1.1 500 Oops\r\n\r\n"[..]);
        let answer = |head: &'static [u8]| Answer { len: head.len() as u32, head };
        let ignored = IgnoredHeaders::default();
        t.comparison.record(b"GET /fine HTTP/1.1\r\n", answer(ok), answer(ok), &ignored);
        t.comparison.record(b"GET /broken/1 HTTP/1.1\r\n", answer(ok), answer(broken), &ignored);
        let v = report_json(&e, None);
        let c = &v["targets"][0]["comparison"];
        assert_eq!((c["compared"].as_u64(), c["different"].as_u64()), (Some(2), Some(1)));
        assert_eq!(c["different_by_kind"]["status"], 1);
        assert_eq!(c["samples"][0]["request"], "GET /broken/1 HTTP/1.1");
        assert_eq!(c["samples"][0]["target"], "HTTP/1.1 500 Oops");
        assert!(target_lines(&e, None)[0].ends_with("compared=2 equal=1 different=1 (status=1) not_compared=0"));
    }
}
