//! `cargo xtask fuzz`: runs the cargo-fuzz targets for a bounded time each and reports how many
//! inputs ran clean.

use std::process::Command;

use anyhow::{bail, Context as _};

const TARGETS: &[&str] = &["packets", "protocol"];

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success())
}

pub fn run(seconds: u64) -> anyhow::Result<()> {
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
        println!("xtask: fuzzing {target} for {seconds} s");
        let out = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target, "--", &format!("-max_total_time={seconds}")])
            .current_dir(&dir)
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "fuzz target {target} failed:\n{}",
                log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("Done ").map(str::to_owned))
            .unwrap_or_else(|| "(no summary)".into());
        println!("xtask: {target}: {runs}, no crash");
    }
    Ok(())
}
