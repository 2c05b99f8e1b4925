//! Reading the binaries' `LABEL stats: a=1 b=2 | per second: ...` and `LABEL summary: a=1`
//! lines.

use std::collections::BTreeMap;

/// The totals of one stats or summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub label: String,
    /// `false` for a periodic `stats` line, `true` for the exit `summary`.
    pub summary: bool,
    pub totals: BTreeMap<String, u64>,
}

impl Stats {
    /// A total, 0 when absent.
    pub fn get(&self, name: &str) -> u64 {
        self.totals.get(name).copied().unwrap_or(0)
    }
}

/// Parses one line; `None` for any other line.
pub fn parse(line: &str) -> Option<Stats> {
    let (head, rest) = line.split_once(": ")?;
    let (label, kind) = head.rsplit_once(' ')?;
    let summary = match kind {
        "stats" => false,
        "summary" => true,
        _ => return None,
    };
    let totals_part = rest.split(" | ").next()?;
    let totals = totals_part
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect::<Option<BTreeMap<_, _>>>()?;
    Some(Stats { label: label.to_owned(), summary, totals })
}

/// The last stats or summary line in `output`.
pub fn last(output: &str) -> Option<Stats> {
    output.lines().rev().find_map(parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stats_and_summary_lines() {
        let s = parse("copier stats: seen=10 matched=4 | per second: seen=5.0 matched=2.0").unwrap();
        assert_eq!((s.label.as_str(), s.summary, s.get("seen"), s.get("matched")), ("copier", false, 10, 4));
        let s = parse("intercept summary: seen=3 redirected=1").unwrap();
        assert!(s.summary);
        assert_eq!(s.get("redirected"), 1);
        assert_eq!(s.get("absent"), 0);
    }

    #[test]
    fn other_lines_are_not_stats() {
        assert_eq!(parse("[INFO copier] copying *:80 to 10.0.0.2:8080"), None);
        assert_eq!(parse("copier stats: seen=x"), None);
    }
}
