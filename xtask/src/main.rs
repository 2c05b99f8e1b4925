//! `cargo xtask`: set-up, build, test, demo and run, so a fresh machine needs two commands.

mod bench;
mod demo;
mod fuzz;
mod setup;

use std::{path::PathBuf, process::Command};

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
    /// Unit tests and the namespace/XDP integration tests (needs root).
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
    /// Measure the capture path (stepped flood rates, copy and mirror mode, transmit paths) and
    /// the replay path (sessions/s, success, CPU per session, RSS), amplification and scaling on
    /// a namespace test bed; writes target/bench/bench.{json,md} and capture.svg (root).
    Bench {
        /// Short sessions (one request each) in the generated capture.
        #[arg(long, default_value_t = 100_000)]
        short: u32,
        /// Keep-alive sessions (ten requests each).
        #[arg(long, default_value_t = 10_000)]
        keepalive: u32,
        /// Run only the scenario of this name ("capture" is the capture path), or those whose
        /// name contains it.
        #[arg(long)]
        only: Option<String>,
        /// Seconds each capture-path step floods for.
        #[arg(long, default_value_t = 1.0)]
        step_seconds: f64,
    },
    /// Run the cargo-fuzz targets (packet parsers, engine, wire protocol) for a while each.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
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

/// Runs a command in the workspace root, failing if it fails.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<()> {
    println!("xtask: building copier and intercept (eBPF programs embedded){}", if release { ", release" } else { "" });
    let mut args = vec!["build", "--quiet"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces, veth, XDP): run it as root");
    }
    Ok(())
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
            setup::run()?;
            build(true)?;
            println!("xtask: running unit and integration tests");
            let mut test_args = vec!["test", "--release"];
            test_args.extend(args.iter().map(String::as_str));
            cargo(&test_args)
        }
        Task::Demo { seconds } => {
            require_root("cargo xtask demo")?;
            setup::run()?;
            build(true)?;
            demo::run(std::time::Duration::from_secs(seconds))
        }
        Task::Bench { short, keepalive, only, step_seconds } => {
            require_root("cargo xtask bench")?;
            setup::run()?;
            build(true)?;
            if cfg!(debug_assertions) {
                // The capture path's traffic generator runs in this process: built for debugging
                // it topped out at 0.3–0.5 Mpps, and the figures measured the generator.
                println!("xtask: the bench runs as an optimised build of itself");
                let mut args = vec!["run", "--quiet", "--release", "--package", "xtask", "--"];
                let own: Vec<String> = std::env::args().skip(1).collect();
                args.extend(own.iter().map(String::as_str));
                return cargo(&args);
            }
            bench::run_all(&workspace_root(), &bench::Plan { short, keepalive, only, step_seconds }).map(|_| ())
        }
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz::run(seconds)
        }
        Task::Run { binary, args } => {
            setup::run()?;
            build(true)?;
            let path = workspace_root().join("target/release").join(&binary);
            let status = Command::new(&path).args(&args).status().with_context(|| format!("running {}", path.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
