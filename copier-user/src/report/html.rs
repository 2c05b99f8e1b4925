//! `--report DIR`'s report.html: the comparison at a glance, in one file that needs no script
//! and no network (it is opened where the run happened, often with no way out): a table per
//! target, SVG plots of latency against production's and of differences by request, and the
//! differing exchanges side by side.

use std::{fmt::Write as _, net::SocketAddr};

use copier_engine::{
    compare::Kinds,
    exchange::{Comparison, Exchanges, TargetExchanges},
};
use hdrhistogram::Histogram;

use super::is_baseline;

/// Plot size in CSS pixels, and the margin left for axis labels.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const MARGIN: f64 = 48.0;
/// Request groups drawn in the differences plot: the ones with most differences first.
const MAX_BARS: usize = 24;

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}\
td.text,th.text{text-align:left;font-family:monospace;white-space:pre-wrap;max-width:32em}\
.different{color:#b00020;font-weight:bold}svg{display:block;margin:1em 0}\
svg text{font-size:11px}.production{stroke:#777}.target{stroke:#1565c0}";

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn page(e: &Exchanges, baseline: Option<SocketAddr>) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>xdpcopy comparison report</title>\
         <style>{STYLE}</style></head><body>\n<h1>xdpcopy: the test servers' answers against production's</h1>\n"
    );
    summary_table(&mut html, e, baseline);
    for (i, t) in e.targets().iter().enumerate() {
        target_section(&mut html, i, t, is_baseline(t, baseline));
    }
    html.push_str("</body></html>\n");
    html
}

fn kinds_text(c: &Comparison) -> String {
    let kinds: Vec<String> =
        Kinds::ALL.iter().zip(c.by_kind).filter(|(_, n)| *n > 0).map(|((_, name), n)| format!("{name} {n}")).collect();
    kinds.join(", ")
}

fn quantile(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        "–".into()
    } else {
        h.value_at_quantile(q).to_string()
    }
}

fn summary_table(html: &mut String, e: &Exchanges, baseline: Option<SocketAddr>) {
    html.push_str(
        "<table id=\"summary\"><tr><th class=\"text\">target</th><th>requests</th><th>answered</th>\
         <th>compared</th><th>equal</th><th>different</th><th class=\"text\">different in</th><th>not compared</th>\
         <th>p50 µs target / production</th><th>p99 µs target / production</th></tr>\n",
    );
    for t in e.targets() {
        let c = &t.comparison;
        let _ = writeln!(
            html,
            "<tr><td class=\"text\"><a href=\"#target-{target}\">{target}</a>{role}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td{cls}>{}</td><td class=\"text\">{}</td><td>{}</td><td>{} / {}</td><td>{} / {}</td></tr>",
            t.requests(),
            t.answered,
            c.compared,
            c.equal(),
            c.different,
            esc(&kinds_text(c)),
            c.not_compared,
            quantile(&t.target_latency_us, 0.5),
            quantile(&t.production_latency_us, 0.5),
            quantile(&t.target_latency_us, 0.99),
            quantile(&t.production_latency_us, 0.99),
            target = esc(&t.target.to_string()),
            role = if is_baseline(t, baseline) { " (baseline)" } else { "" },
            cls = if c.different > 0 { " class=\"different\"" } else { "" },
        );
    }
    html.push_str("</table>\n");
}

fn target_section(html: &mut String, index: usize, t: &TargetExchanges, baseline: bool) {
    let target = esc(&t.target.to_string());
    let _ = writeln!(
        html,
        "<section id=\"target-{target}\"><h2>{target}{}</h2>",
        if baseline { " (baseline: its differences from production are noise)" } else { "" }
    );
    latency_plot(html, index, t);
    differences_plot(html, &t.comparison);
    samples_table(html, &t.comparison);
    html.push_str("</section>\n");
}

/// Quantiles drawn per line: every 2 % and the tail.
fn cdf_points(h: &Histogram<u64>) -> Vec<(u64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (0..=49).map(|i| f64::from(i) / 50.0).collect();
    qs.extend([0.99, 0.999, 1.0]);
    qs.into_iter().map(|q| (h.value_at_quantile(q).max(1), q)).collect()
}

/// The first-byte latency's distribution (share of answers at or under x µs, x on a log scale),
/// the target's beside production's.
fn latency_plot(html: &mut String, index: usize, t: &TargetExchanges) {
    let lines = [("production", &t.production_latency_us), ("target", &t.target_latency_us)]
        .map(|(name, h)| (name, h.len(), cdf_points(h)));
    let _ = write!(
        html,
        "<svg class=\"latency\" id=\"latency-{index}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\">\
         <title>first-byte latency, target against production</title>"
    );
    let max = lines.iter().flat_map(|(_, _, p)| p.iter().map(|(v, _)| *v)).max();
    let Some(max) = max else {
        let _ = write!(html, "<text x=\"{MARGIN}\" y=\"{}\">no answer was timed</text></svg>", HEIGHT / 2.0);
        return;
    };
    let decades = (max as f64).log10().ceil().max(1.0);
    let (plot_w, plot_h) = (WIDTH - 2.0 * MARGIN, HEIGHT - 2.0 * MARGIN);
    let x = |us: u64| MARGIN + (us as f64).log10() / decades * plot_w;
    let y = |q: f64| HEIGHT - MARGIN - q * plot_h;
    // Axes, a tick per decade, and the share at 0, ½ and 1.
    let _ = write!(
        html,
        "<path d=\"M{MARGIN} {MARGIN}V{b}H{r}\" fill=\"none\" stroke=\"#222\"/>",
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN
    );
    for d in 0..=decades as u32 {
        let xd = x(10u64.pow(d));
        let _ = write!(
            html,
            "<text x=\"{xd}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            HEIGHT - MARGIN + 14.0,
            10u64.pow(d)
        );
    }
    for q in [0.0, 0.5, 1.0] {
        let _ = write!(html, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{q}</text>", MARGIN - 4.0, y(q) + 4.0);
    }
    let _ = write!(
        html,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">first-byte latency, µs (log)</text>",
        WIDTH / 2.0,
        HEIGHT - 8.0
    );
    for (row, (name, count, points)) in lines.iter().enumerate() {
        if !points.is_empty() {
            let d: Vec<String> = points.iter().map(|(v, q)| format!("{:.1},{:.1}", x(*v), y(*q))).collect();
            let _ = write!(
                html,
                "<polyline class=\"{name}\" points=\"{}\" fill=\"none\" stroke-width=\"2\"/>",
                d.join(" ")
            );
        }
        let ly = MARGIN + 14.0 * row as f64;
        let _ = write!(
            html,
            "<line class=\"{name}\" x1=\"{lx}\" y1=\"{ly}\" x2=\"{lx2}\" y2=\"{ly}\" stroke-width=\"2\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{name} ({count} answers)</text>",
            lx = MARGIN + 10.0,
            lx2 = MARGIN + 30.0,
            tx = MARGIN + 36.0,
            ty = ly + 4.0,
        );
    }
    html.push_str("</svg>\n");
}

/// Per request group (method and first path segment, or redis command): a bar as long as the
/// exchanges compared, its differing share in red.
fn differences_plot(html: &mut String, c: &Comparison) {
    if c.groups.is_empty() {
        return;
    }
    let mut groups: Vec<_> = c.groups.iter().collect();
    groups.sort_by(|a, b| b.1.different.cmp(&a.1.different).then(b.1.compared.cmp(&a.1.compared)));
    groups.truncate(MAX_BARS);
    let most = groups.iter().map(|(_, g)| g.compared).max().unwrap_or(1).max(1) as f64;
    let (label_w, row_h) = (220.0, 18.0);
    let height = row_h * groups.len() as f64 + 24.0;
    let _ = write!(
        html,
        "<svg class=\"differences\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" \
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\"><title>differences by request</title>\
         <text x=\"0\" y=\"12\">differences by request (red: different, grey: equal)</text>"
    );
    let bar_w = WIDTH - label_w - 80.0;
    for (i, (name, g)) in groups.iter().enumerate() {
        let top = 20.0 + row_h * i as f64;
        let all = g.compared as f64 / most * bar_w;
        let red = g.different as f64 / most * bar_w;
        let _ = write!(
            html,
            "<g class=\"group\"><text x=\"0\" y=\"{ty}\">{name}</text>\
             <rect x=\"{label_w}\" y=\"{top}\" width=\"{all:.1}\" height=\"{h}\" fill=\"#ccc\"/>\
             <rect class=\"different\" x=\"{label_w}\" y=\"{top}\" width=\"{red:.1}\" height=\"{h}\" fill=\"#b00020\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{} of {}</text></g>",
            g.different,
            g.compared,
            name = esc(name),
            ty = top + 12.0,
            h = row_h - 4.0,
            tx = label_w + all + 6.0,
        );
    }
    html.push_str("</svg>\n");
}

/// The differing exchanges kept, each as request, production's answer and the target's, side by side.
fn samples_table(html: &mut String, c: &Comparison) {
    if c.samples.is_empty() {
        let _ =
            writeln!(html, "<p>No differing exchange{}.</p>", if c.compared == 0 { " (nothing compared)" } else { "" });
        return;
    }
    let _ = writeln!(
        html,
        "<table class=\"samples\"><caption>{} of {} differing exchanges</caption><tr><th class=\"text\">request</th>\
         <th class=\"text\">production answered</th><th class=\"text\">the target answered</th>\
         <th class=\"text\">different in</th></tr>",
        c.samples.len(),
        c.different
    );
    for s in &c.samples {
        let mut kinds: Vec<String> = s.difference.kinds.names().map(str::to_owned).collect();
        if !s.difference.headers.is_empty() {
            kinds.push(format!("({})", s.difference.headers.join(", ")));
        }
        let _ = writeln!(
            html,
            "<tr class=\"sample\"><td class=\"text\">{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text different\">{}</td></tr>",
            esc(&s.request),
            esc(&s.production),
            esc(&s.target),
            esc(&kinds.join(" "))
        );
    }
    html.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use common::endpoint::Endpoint;
    use copier_engine::compare::{Answer, IgnoredHeaders};

    use super::*;

    fn exchanges() -> Exchanges {
        let mut e = Exchanges::default();
        let t = e.of(Endpoint::v4([10, 0, 0, 2], 8080));
        for us in [120, 150, 900, 20_000] {
            t.target_latency_us.record(us).unwrap();
            t.production_latency_us.record(us / 2).unwrap();
        }
        let (ok, broken) = (&b"HTTP/1.1 200 OK\r\n\r\n"[..], &b"HTTP/1.1 500 <Oops>\r\n\r\n"[..]);
        let answer = |head: &'static [u8]| Answer { len: head.len() as u32, head };
        let ignored = IgnoredHeaders::default();
        t.comparison.record(b"GET /fine HTTP/1.1\r\n", answer(ok), answer(ok), &ignored);
        t.comparison.record(b"GET /broken/<1> HTTP/1.1\r\n", answer(ok), answer(broken), &ignored);
        e.of(Endpoint::v4([10, 0, 0, 3], 8080));
        e
    }

    #[test]
    fn the_page_has_a_plot_per_target_and_escapes_what_it_quotes() {
        let html = page(&exchanges(), Some("10.0.0.3:8080".parse().unwrap()));
        assert_eq!(html.matches("<svg class=\"latency\"").count(), 2);
        assert_eq!(html.matches("<svg class=\"differences\"").count(), 1, "the second target compared nothing");
        assert!(html.contains("GET /broken/&lt;1&gt; HTTP/1.1"), "{html}");
        assert!(html.contains("HTTP/1.1 500 &lt;Oops&gt;"));
        assert!(!html.contains("<Oops>") && !html.contains("<1>"));
        assert!(html.contains("10.0.0.3:8080</a> (baseline)"));
        assert!(html.contains("no answer was timed"), "the empty target says so");
        assert!(!html.contains("src=") && !html.contains("href=\"http") && !html.contains("<script"), "self-contained");
        assert_eq!(html.matches("<tr class=\"sample\">").count(), 1);
    }

    #[test]
    fn latency_lines_rise_from_zero_to_one() {
        let e = exchanges();
        let points = cdf_points(&e.targets()[0].target_latency_us);
        assert_eq!(points.first().map(|p| p.1), Some(0.0));
        assert_eq!(points.last().map(|p| p.1), Some(1.0));
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0), "{points:?}");
    }
}
