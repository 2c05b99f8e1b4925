//! Small SVG line and bar charts (no plotting dependency for a few charts).

use std::fmt::Write as _;

pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A dashed y = x line (for "processed vs offered").
    pub diagonal: bool,
}

const W: f64 = 720.0;
const H: f64 = 320.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// A "nice" upper bound and tick step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

fn number(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Chart {
    /// The chart as an SVG group of height [`H`], placed at `y`.
    fn group(&self, y: f64) -> String {
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x_max, x_step) = axis(all().map(|p| p.0).fold(0.0, f64::max));
        let mut y_top = all().map(|p| p.1).fold(0.0, f64::max);
        if self.diagonal {
            y_top = y_top.max(x_max);
        }
        let (y_max, y_step) = axis(y_top);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |v: f64| LEFT + v / x_max * pw;
        let sy = |v: f64| TOP + ph - v / y_max * ph;
        let mut g = format!("<g transform=\"translate(0,{y})\">\n");
        let _ = writeln!(
            g,
            "<text x=\"{}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>",
            LEFT,
            escape(&self.title)
        );
        let mut tick = 0.0;
        while tick <= x_max + 1e-9 {
            let _ = writeln!(
                g,
                "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#ddd\"/>",
                sx(tick),
                TOP,
                TOP + ph
            );
            let _ = writeln!(
                g,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
                sx(tick),
                TOP + ph + 16.0,
                number(tick)
            );
            tick += x_step;
        }
        let mut tick = 0.0;
        while tick <= y_max + 1e-9 {
            let _ = writeln!(
                g,
                "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"#ddd\"/>",
                LEFT,
                sy(tick),
                LEFT + pw
            );
            let _ = writeln!(
                g,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                sy(tick) + 4.0,
                number(tick)
            );
            tick += y_step;
        }
        let _ = writeln!(
            g,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>"
        );
        let _ = writeln!(
            g,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
            LEFT + pw / 2.0,
            H - 12.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            g,
            "<text x=\"18\" y=\"{0:.1}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0:.1})\">{1}</text>",
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        if self.diagonal {
            let end = x_max.min(y_max);
            let _ = writeln!(
                g,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"5,4\"/>",
                sx(0.0),
                sy(0.0),
                sx(end),
                sy(end)
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            // A line left to right, whatever order the measurements came in.
            let mut sorted = s.points.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            let points: Vec<String> = sorted.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
            let _ = writeln!(
                g,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                points.join(" "),
                s.color
            );
            for (x, y) in &s.points {
                let _ = writeln!(g, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>", sx(*x), sy(*y), s.color);
            }
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                g,
                "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/>",
                lx + 18.0,
                s.color
            );
            let _ = writeln!(
                g,
                "<text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
                lx + 24.0,
                ly + 4.0,
                escape(&s.label)
            );
        }
        g + "</g>\n"
    }
}

/// Charts stacked into one SVG document.
pub fn document(charts: &[Chart]) -> String {
    let height = H * charts.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, c) in charts.iter().enumerate() {
        svg += &c.group(H * i as f64);
    }
    svg + "</svg>\n"
}

/// Horizontal bar charts of ratios, one below the other: each a title and (label, value) bars,
/// with a dashed line at 1 (parity).
pub fn bars(charts: &[(&str, Vec<(String, f64)>)]) -> String {
    const ROW: f64 = 22.0;
    const LABEL: f64 = 260.0;
    let heights: Vec<f64> = charts.iter().map(|(_, bars)| TOP + ROW * bars.len().max(1) as f64 + 20.0).collect();
    let total: f64 = heights.iter().sum();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{total}\" viewBox=\"0 0 {W} {total}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let mut y = 0.0;
    for ((title, bars), height) in charts.iter().zip(heights) {
        let (max, _) = axis(bars.iter().map(|b| b.1).filter(|v| v.is_finite()).fold(1.0, f64::max));
        let width = W - LABEL - 80.0;
        let scale = |v: f64| LABEL + width * (v / max).clamp(0.0, 1.0);
        let _ = writeln!(svg, "<text x=\"10\" y=\"{:.1}\" font-size=\"14\">{}</text>", y + 24.0, escape(title));
        for (i, (label, value)) in bars.iter().enumerate() {
            let top = y + TOP + ROW * i as f64;
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{LABEL}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"steelblue\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{value:.2}</text>",
                LABEL - 6.0,
                top + ROW * 0.6,
                escape(label),
                scale(*value) - LABEL,
                ROW * 0.75,
                scale(*value) + 4.0,
                top + ROW * 0.6,
            );
        }
        let one = scale(1.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{one:.1}\" y1=\"{:.1}\" x2=\"{one:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>",
            y + TOP - 4.0,
            y + TOP + ROW * bars.len() as f64
        );
        y += height;
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers_above_the_data() {
        assert_eq!(axis(730_000.0), (800_000.0, 200_000.0));
        assert_eq!(axis(4.2), (5.0, 1.0));
        assert_eq!(axis(0.0), (1.0, 0.2));
    }

    #[test]
    fn every_series_becomes_a_labelled_polyline() {
        let chart = Chart {
            title: "t".into(),
            x_label: "offered".into(),
            y_label: "processed".into(),
            series: vec![Series { label: "a<b".into(), color: "red", points: vec![(10.0, 5.0), (0.0, 0.0)] }],
            diagonal: true,
        };
        let svg = document(&[chart]);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("points=\"80.0,270.0 500.0,155.0\""), "sorted by x, scaled into the plot: {svg}");
        assert!(svg.contains("a&lt;b") && svg.contains("stroke-dasharray"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn bars_are_scaled_to_the_largest_and_parity_is_marked() {
        let svg = bars(&[("ratios", vec![("a<b".into(), 4.0), ("c".into(), 0.5)])]);
        assert_eq!(svg.matches("fill=\"steelblue\"").count(), 2);
        assert!(svg.contains("a&lt;b") && svg.contains(">4.00<") && svg.contains(">0.50<"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 1, "the line at 1");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
