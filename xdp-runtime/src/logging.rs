//! The binaries' log: human lines on standard error, or one JSON object a line
//! (`--log-format json`) for log collectors. `RUST_LOG` picks the level either way (default
//! info). The stats and summary lines are not log records: they stay on standard output.

use std::io::Write as _;

/// How log records are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[TIME LEVEL target] message`.
    #[default]
    Text,
    /// `{"time":…,"level":…,"target":…,"message":…}`, one a line.
    Json,
}

/// A record as a JSON line.
fn json_line(time: &str, level: log::Level, target: &str, message: &str) -> String {
    serde_json::json!({ "time": time, "level": level.as_str(), "target": target, "message": message }).to_string()
}

pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let time = buf.timestamp_micros().to_string();
            writeln!(buf, "{}", json_line(&time, record.level(), record.target(), &record.args().to_string()))
        });
    }
    builder.init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_escapes_what_it_carries() {
        let line = json_line("2026-12-02T06:00:00Z", log::Level::Warn, "copier", "a \"quoted\"\nmessage");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!((v["level"].as_str(), v["message"].as_str()), (Some("WARN"), Some("a \"quoted\"\nmessage")));
        assert!(!line.contains('\n'), "one line");
    }
}
