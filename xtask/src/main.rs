//! `cargo xtask`: set-up, build, test, demo, bench and run, so a fresh machine needs two commands.
//!
//! xtask depends on no product crate and on nothing with a build script that needs a system
//! package, a nightly or bpf-linker: it must build before `setup` has installed them. Everything
//! else (the binaries, the test bed, the demo, the bench) is built by `cargo` after setup.

mod fresh;
mod fuzz;
mod package;
mod setup;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and demo xdpcopy")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build, tests and demo need (idempotent).
    Setup,
    /// Build the binaries (their eBPF programs embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Checks (fresh-machine build of xtask, rustfmt, clippy), unit tests and the
    /// namespace/XDP integration tests (needs root).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The live picture on a namespace test bed: production vs test server, side by side (root).
    Demo {
        /// How long the clients send traffic.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Measure the capture and replay paths on a namespace test bed; writes
    /// target/bench/bench.{json,md} and capture.svg (root). Arguments go to `xdpcopy-bench`
    /// (`cargo xtask bench -- --help`).
    Bench {
        /// Also build the original tcpcopy and intercept from the source archives in DIR and run
        /// them beside ours, interleaved (e.g. `../shared/peers`).
        #[arg(long, value_name = "DIR")]
        peer: Option<PathBuf>,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the cargo-fuzz targets (packet parsers and engine, wire protocol, control-channel
    /// sequences, capture files), each for `--runs` inputs or `--seconds`, whichever ends first.
    Fuzz {
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        #[arg(long, default_value_t = 10_000_000)]
        runs: u64,
    },
    /// Build the release binaries and a Debian package of them, their systemd units and man
    /// pages: target/package/xdpcopy_VERSION_ARCH.deb.
    Package,
    /// Build in release mode and run `copier` or `intercept` with the given arguments.
    Run {
        #[arg(value_parser = ["copier", "intercept"])]
        binary: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cargo ARGS` in the workspace root, failing if it fails.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = cargo_command().args(args).status().with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<()> {
    println!("xtask: building copier and intercept (eBPF programs embedded){}", if release { ", release" } else { "" });
    let mut args = vec!["build", "--quiet", "--locked", "--bins"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

/// Runs a binary of the test bed crate, optimised (the bench's generator lives in it).
fn testbed_bin(name: &str, args: &[String]) -> anyhow::Result<()> {
    let mut all = vec!["run", "--quiet", "--locked", "--release", "--package", "xdpcopy-testbed", "--bin", name, "--"];
    all.extend(args.iter().map(String::as_str));
    cargo(&all)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, veth, XDP): run it as root");
    }
    Ok(())
}

/// rustfmt and clippy over the host crates, warnings as errors.
fn lint() -> anyhow::Result<()> {
    println!("xtask: cargo fmt --check");
    cargo(&["fmt", "--all", "--check"]).context("the code is not formatted: run `cargo fmt --all`")?;
    println!("xtask: cargo clippy (warnings are errors)");
    cargo(&["clippy", "--quiet", "--locked", "--release", "--all-targets", "--", "-D", "warnings"])
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release)
        }
        Task::Test { args } => {
            require_root("cargo xtask test")?;
            fresh::check()?;
            setup::run()?;
            lint()?;
            build(true)?;
            package::run()?; // the package test installs it
            println!("xtask: running unit and integration tests");
            let mut test_args = vec!["test", "--locked", "--release"];
            test_args.extend(args.iter().map(String::as_str));
            cargo(&test_args)
        }
        Task::Demo { seconds } => {
            require_root("cargo xtask demo")?;
            setup::run()?;
            build(true)?;
            testbed_bin("xdpcopy-demo", &["--seconds".into(), seconds.to_string()])
        }
        Task::Bench { peer, mut args } => {
            require_root("cargo xtask bench")?;
            setup::run()?;
            build(true)?;
            if let Some(dir) = peer {
                // The bench runs from the workspace root: a relative path means the caller's.
                let dir = std::path::absolute(&dir).with_context(|| format!("--peer {}", dir.display()))?;
                args.extend(["--peer".into(), dir.to_string_lossy().into_owned()]);
            }
            testbed_bin("xdpcopy-bench", &args)
        }
        Task::Package => {
            setup::run()?;
            build(true)?;
            package::run().map(|_| ())
        }
        Task::Fuzz { seconds, runs } => {
            setup::run()?;
            fuzz::run(seconds, runs)
        }
        Task::Run { binary, args } => {
            setup::run()?;
            build(true)?;
            let path = workspace_root().join("target/release").join(&binary);
            let status =
                Command::new(&path).args(&args).status().with_context(|| format!("running {}", path.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
