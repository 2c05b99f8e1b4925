//! `cargo xtask fuzz`: runs the cargo-fuzz targets, each until it has run `runs` inputs or for
//! `seconds`, whichever comes first, and reports how many inputs ran clean.

use std::process::Command;

use anyhow::{bail, Context as _};

/// Packet parsers and the engine; the wire protocol's decoder; sequences of control-channel
/// frames against the intercept's ownership rules; capture files.
const TARGETS: &[&str] = &["packets", "protocol", "control", "capture_file"];

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success())
}

pub fn run(seconds: u64, runs: u64) -> anyhow::Result<()> {
    if cargo_fuzz_installed() {
        println!("setup: cargo-fuzz: present");
    } else {
        println!("setup: cargo-fuzz: installing");
        let st = Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]).status()?;
        if !st.success() {
            bail!("installing cargo-fuzz failed ({st})");
        }
    }
    let dir = crate::workspace_root().join("fuzz");
    for target in TARGETS {
        println!("xtask: fuzzing {target} for {runs} inputs or {seconds} s");
        let mut args = vec!["+nightly".to_owned(), "fuzz".into(), "run".into(), (*target).into(), "--".into()];
        args.push(format!("-max_total_time={seconds}"));
        args.push(format!("-runs={runs}"));
        let out = Command::new("cargo")
            .args(&args)
            .env("AYA_BUILD_SKIP", "1") // the copier's library needs no eBPF object
            .current_dir(&dir)
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            bail!("fuzz target {target} failed:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        let done = log.lines().find_map(|l| l.strip_prefix("Done ").map(str::to_owned));
        println!("xtask: {target}: {}, no crash", done.unwrap_or_else(|| "(no summary)".into()));
    }
    Ok(())
}
