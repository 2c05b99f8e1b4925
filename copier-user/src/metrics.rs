//! The copier's `--metrics`: its stats line's counters as `xdpcopy_copier_*`, the exchanges per
//! target (label `target`), each worker's share (`worker_*`, label `worker`: one worker falling
//! behind shows), and the first-byte latencies of each target and of production as histograms
//! in seconds.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use copier_user::runtime::{intercepts::LinkStats, worker::Shared};
use hdrhistogram::Histogram;
use xdp_runtime::metrics::{HistogramSample, Kind, Sample, Snapshot};

/// Values that go up and down; the rest only grow.
const GAUGES: &[&str] = &["active", "buffered", "intercepts"];

/// Latency buckets' upper bounds, seconds.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn help(name: &str) -> &'static str {
    match name {
        "seen" => "Frames the XDP program ran for",
        "matched" => "TCP segments to an online endpoint",
        "copied" => "Matching frames copied into the capture ring",
        "truncated" => "Copied frames longer than a capture record holds",
        "ring_full" => "Matching frames not copied: the capture ring was full",
        "passed" => "Frames handed on to the kernel",
        "malformed" => "Frames that claimed IP/TCP but did not parse",
        "redirected" => "Mirror mode: frames redirected into AF_XDP",
        "no_socket" => "Mirror mode: frames of a queue without an AF_XDP socket",
        "dropped" => "Mirror mode: frames dropped (--mirror-other drop)",
        "queue_full" => "Captured frames lost to a full worker queue",
        "sessions" => "Sessions started, every copy",
        "completed" => "Sessions closed cleanly",
        "reset" => "Sessions ended by a reset",
        "timed_out" => "Sessions idle past -t",
        "gave_up" => "Sessions that ran out of retransmissions",
        "shed" => "Sessions refused or dropped for the session or memory bound",
        "skipped" => "Sessions left out by -r or -O",
        "rate_limited" => "Sessions left out by --max-rate",
        "queued" => "Sessions that waited for their turn to open",
        "queued_peak" => "Most sessions waiting at once",
        "requests" => "Requests sent",
        "sent" => "Packets sent to the test server",
        "retransmitted" => "Packets retransmitted",
        "bytes" => "Payload bytes sent",
        "captured" => "Captured frames shown to the engine",
        "not_tcp" => "Captured frames that are not TCP",
        "unmapped" => "Captured segments no -x mapping names",
        "answers_captured" => "Captured segments of the online server (production's answers)",
        "stray_resets" => "Captured resets of no live session",
        "unparsed" => "Captured frames that did not parse",
        "unmatched_replies" => "Reply facts of no live session",
        "active" => "Sessions open now",
        "buffered" => "Captured payload bytes held now",
        "tx_errors" => "Packets the transmit path refused",
        "cpu_us" => "CPU time of the process, microseconds",
        "intercepts" => "Intercepts connected now",
        "reconnects" => "Intercept connections re-established",
        "facts" => "Reply facts received",
        "facts_dropped" => "Reply facts lost to a full worker queue",
        _ => "See the README's stats section",
    }
}

fn seconds(h: &Histogram<u64>, name: &'static str, help: &'static str, target: &str) -> HistogramSample {
    let mut below = 0;
    let buckets = BUCKETS
        .iter()
        .map(|&le| {
            let upto = h.count_between(0, (le * 1e6) as u64);
            let n = upto.saturating_sub(below);
            below = upto;
            (le, n)
        })
        .collect();
    HistogramSample {
        name,
        help,
        labels: vec![("target", target.to_owned())],
        sum: h.mean() * h.len() as f64 / 1e6,
        count: h.len(),
        buckets,
    }
}

/// One scrape.
fn snapshot(xdp: &dyn Fn() -> Vec<(&'static str, u64)>, shared: &[Arc<Shared>], links: &LinkStats) -> Snapshot {
    let mut s = Snapshot::default();
    let exchanges = crate::report::exchanges(shared);
    // The exchanges' sums are in the stats line; here they are per target.
    let per_target: Vec<&str> = crate::report::pairs(&exchanges).iter().map(|(k, _)| *k).collect();
    let mut pairs = xdp();
    pairs.extend(crate::copier_pairs(shared, links).into_iter().filter(|(k, _)| !per_target.contains(k)));
    s.pairs(&pairs, GAUGES, help);
    for (index, w) in shared.iter().enumerate() {
        let counters = w.counters.lock().expect("not poisoned").pairs();
        let counter = |name| counters.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
        let (active, buffered) = *w.active.lock().expect("not poisoned");
        let tx_errors = *w.tx_errors.lock().expect("not poisoned");
        for (name, help, kind, value) in [
            ("worker_sessions", "Sessions this worker started", Kind::Counter, counter("sessions") as f64),
            ("worker_sent", "Packets this worker sent to the targets", Kind::Counter, counter("sent") as f64),
            ("worker_tx_errors", "Packets this worker's transmit path refused", Kind::Counter, tx_errors as f64),
            (
                "worker_cpu_seconds",
                "CPU time of this worker's thread",
                Kind::Counter,
                w.cpu_us.load(Relaxed) as f64 / 1e6,
            ),
            ("worker_active", "Sessions this worker holds", Kind::Gauge, active as f64),
            ("worker_buffered", "Captured payload bytes this worker holds", Kind::Gauge, buffered as f64),
        ] {
            let labels = vec![("worker", index.to_string())];
            s.samples.push(Sample { name, help, kind, labels, value });
        }
    }
    for t in exchanges.targets() {
        let target = t.target.to_string();
        for (name, help, value) in [
            ("answered", "Requests the target answered as production did", t.answered),
            ("answered_short", "Requests the target answered shorter than production", t.answered_short),
            ("unanswered", "Requests the target did not answer where production did", t.unanswered),
            ("unanswered_online", "Requests production did not answer either", t.unanswered_online),
            ("answer_timeouts", "Exchanges that went on after --answer-timeout", t.answer_timeouts),
            ("refused", "SYNs the target reset", t.sessions_refused),
            ("reset_by_target", "Established sessions the target reset", t.sessions_reset_by_target),
            ("stale_reset", "SYNs that met a connection left from an earlier run", t.stale_connections_reset),
            ("compared", "Answers compared with production's (--payload-bytes)", t.comparison.compared),
            ("different", "Answers that differed from production's", t.comparison.different),
            ("not_compared", "Answered exchanges whose answers were not both seen", t.comparison.not_compared),
        ] {
            let labels = vec![("target", target.clone())];
            s.samples.push(Sample { name, help, kind: Kind::Counter, labels, value: value as f64 });
        }
        s.histograms.push(seconds(
            &t.target_latency_us,
            "target_first_byte_seconds",
            "From a request's last byte sent to the target's first answer byte",
            &target,
        ));
        s.histograms.push(seconds(
            &t.production_latency_us,
            "production_first_byte_seconds",
            "From a request's last byte captured to the client's first acknowledgement of the answer",
            &target,
        ));
    }
    s
}

pub fn serve(
    addr: SocketAddr,
    xdp: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    shared: Vec<Arc<Shared>>,
    links: Arc<LinkStats>,
) -> anyhow::Result<()> {
    xdp_runtime::metrics::serve(addr, "xdpcopy_copier", Arc::new(move || snapshot(&xdp, &shared, &links)))
}
