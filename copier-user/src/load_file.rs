//! `--load-file`: the share of sessions (`-r`) and the copies of each (`-n`) of a live copy,
//! changed while it runs. The file is read again on SIGHUP (`systemctl reload`); sessions that
//! start afterwards follow it, those in progress keep what they started with.

use std::path::Path;

/// What a load file sets; what it leaves out stays as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// `rate = P`: percent of sessions, 1 to 100.
    pub rate: Option<u8>,
    /// `multiply = N`: copies of each session, 1 to 1000.
    pub multiply: Option<u16>,
}

/// Parses `key = value` lines (`#` starts a comment; blank lines are skipped).
pub fn parse(text: &str) -> Result<Load, String> {
    let mut load = Load::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("line {}", n + 1);
        let (key, value) =
            line.split_once('=').ok_or_else(|| format!("{}: expected KEY = VALUE, got {line:?}", at()))?;
        let value = value.trim();
        match key.trim() {
            "rate" => {
                let rate = value.parse::<u8>().ok().filter(|r| (1..=100).contains(r));
                load.rate =
                    Some(rate.ok_or_else(|| format!("{}: rate must be 1 to 100 (percent), got {value:?}", at()))?);
            }
            "multiply" => {
                let n = value.parse::<u16>().ok().filter(|n| (1..=1000).contains(n));
                load.multiply = Some(n.ok_or_else(|| format!("{}: multiply must be 1 to 1000, got {value:?}", at()))?);
            }
            other => return Err(format!("{}: unknown key {other:?} (rate, multiply)", at())),
        }
    }
    Ok(load)
}

/// Reads and parses `path`.
pub fn read(path: &Path) -> Result<Load, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_may_be_left_out_and_comments_are_skipped() {
        assert_eq!(parse("rate = 25\nmultiply=3\n").unwrap(), Load { rate: Some(25), multiply: Some(3) });
        assert_eq!(
            parse("# only the rate\n\n  rate=100  # all of it\n").unwrap(),
            Load { rate: Some(100), multiply: None }
        );
        assert_eq!(parse("").unwrap(), Load::default());
    }

    #[test]
    fn bad_lines_are_named_and_change_nothing() {
        for (text, says) in [
            ("rate = 0", "line 1: rate must be 1 to 100"),
            ("rate = 101", "rate must be 1 to 100"),
            ("multiply = 1001", "multiply must be 1 to 1000"),
            ("multiply = -1", "multiply must be 1 to 1000"),
            ("rate = 5\nspeed = 2", "line 2: unknown key \"speed\""),
            ("rate 5", "expected KEY = VALUE"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
