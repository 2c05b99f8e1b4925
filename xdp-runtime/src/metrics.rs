//! `--metrics ADDR:PORT`: what the stats line says, in Prometheus's text format on `/metrics`,
//! for dashboards. Each scrape takes a fresh [`Snapshot`] from the binary (the same sources as
//! its stats line), encodes it with prometheus-client and serves it with tiny_http from a thread
//! of its own, so a slow scraper never holds up a worker.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder},
    metrics::MetricType,
    registry::Registry,
};

/// How a value behaves over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (the encoder adds `_total`).
    Counter,
    /// Goes up and down (sessions open now, copiers connected).
    Gauge,
}

/// One value of a metric, with its labels.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A histogram: per-bucket counts under upper bounds (in the metric's unit), as Prometheus
/// wants them; the encoder adds them up and the `+Inf` bucket.
#[derive(Clone, Debug)]
pub struct HistogramSample {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub samples: Vec<Sample>,
    pub histograms: Vec<HistogramSample>,
}

impl Snapshot {
    /// Adds a stats line's `name=value` pairs; `gauges` names those that are not counters. A
    /// `*_us` counter becomes `*_seconds`, in seconds, as Prometheus names units.
    pub fn pairs(&mut self, pairs: &[(&'static str, u64)], gauges: &[&str], help: impl Fn(&str) -> &'static str) {
        for &(name, value) in pairs {
            let kind = if gauges.contains(&name) { Kind::Gauge } else { Kind::Counter };
            let (metric, value) = match name {
                "cpu_us" => ("cpu_seconds", value as f64 / 1e6),
                _ => (name, value as f64),
            };
            self.samples.push(Sample { name: metric, help: help(name), kind, labels: Vec::new(), value });
        }
    }
}

type Source = dyn Fn() -> Snapshot + Send + Sync;

struct Scrape(Arc<Source>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

fn value(mut m: MetricEncoder<'_>, kind: Kind, v: f64) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => m.encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(&v, None),
        Kind::Gauge => m.encode_gauge(&v),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = (self.0)();
        // One descriptor per name, then every labelled value of it.
        let mut done: Vec<&str> = Vec::new();
        for s in &snapshot.samples {
            if done.contains(&s.name) {
                continue;
            }
            done.push(s.name);
            let kind = if s.kind == Kind::Counter { MetricType::Counter } else { MetricType::Gauge };
            let mut family = encoder.encode_descriptor(s.name, s.help, None, kind)?;
            for same in snapshot.samples.iter().filter(|o| o.name == s.name) {
                if same.labels.is_empty() {
                    value(family.encode_family(&Vec::<(&str, String)>::new())?, same.kind, same.value)?;
                } else {
                    value(family.encode_family(&same.labels)?, same.kind, same.value)?;
                }
            }
        }
        let mut done: Vec<&str> = Vec::new();
        for h in &snapshot.histograms {
            if done.contains(&h.name) {
                continue;
            }
            done.push(h.name);
            let mut family = encoder.encode_descriptor(h.name, h.help, None, MetricType::Histogram)?;
            for same in snapshot.histograms.iter().filter(|o| o.name == h.name) {
                family.encode_family(&same.labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    same.sum,
                    same.count,
                    &same.buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// The text a scrape returns: `prefix_name` for every metric of `snapshot`.
pub fn render(prefix: &str, source: Arc<Source>) -> String {
    let mut registry = Registry::with_prefix(prefix);
    registry.register_collector(Box::new(Scrape(source)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// Serves `/metrics` on `addr` until the process exits, each scrape from `source`.
pub fn serve(addr: SocketAddr, prefix: &'static str, source: Arc<Source>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("{e}")).context("serving metrics")?;
    log::info!("metrics on http://{addr}/metrics");
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let content_type = tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .expect("a valid header");
        for request in server.incoming_requests() {
            let response = if request.url() == "/metrics" {
                tiny_http::Response::from_string(render(prefix, Arc::clone(&source))).with_header(content_type.clone())
            } else {
                tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
            };
            let _ = request.respond(response);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_labels_and_histograms_render_in_the_text_format() {
        let source: Arc<Source> = Arc::new(|| {
            let mut s = Snapshot::default();
            s.pairs(&[("sessions", 7), ("active", 2)], &["active"], |n| if n == "active" { "now" } else { "so far" });
            for (target, v) in [("10.0.0.2:8080", 3), ("10.0.0.3:80", 4)] {
                s.samples.push(Sample {
                    name: "answered",
                    help: "answered in full",
                    kind: Kind::Counter,
                    labels: vec![("target", target.into())],
                    value: v as f64,
                });
            }
            s.histograms.push(HistogramSample {
                name: "latency_seconds",
                help: "first byte",
                labels: vec![("target", "10.0.0.2:8080".into())],
                sum: 0.5,
                count: 3,
                buckets: vec![(0.1, 2), (1.0, 1)],
            });
            s
        });
        let text = render("xdpcopy_copier", source);
        for line in [
            "# TYPE xdpcopy_copier_sessions_total counter",
            "xdpcopy_copier_sessions_total 7.0",
            "# TYPE xdpcopy_copier_active gauge",
            "xdpcopy_copier_active 2.0",
            "xdpcopy_copier_answered_total{target=\"10.0.0.3:80\"} 4.0",
            "xdpcopy_copier_latency_seconds_bucket{target=\"10.0.0.2:8080\",le=\"1\"} 3",
            "xdpcopy_copier_latency_seconds_bucket{target=\"10.0.0.2:8080\",le=\"+Inf\"} 3",
            "xdpcopy_copier_latency_seconds_count{target=\"10.0.0.2:8080\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
