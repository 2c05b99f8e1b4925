//! `cargo xtask setup`: installs what is missing, idempotently, one line per step.
//!
//! The toolchain facts behind it: eBPF crates build on the installed nightly with
//! rust-src; bpf-linker 0.13 must link that nightly's own libLLVM 22, so it is built against a
//! prefix whose `lib/libLLVM.so` points into the nightly's sysroot, with an rpath to it so it
//! runs without `LD_LIBRARY_PATH`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// Debian packages for the build (xsk-rs builds libxdp: clang, libelf, zlib, m4, pkg-config),
/// the test bed (iproute2, procps for sysctl, nginx, redis, nftables for loss, prometheus to
/// scrape the binaries, tmux for a terminal, help2man for the package's man pages, chromium to
/// render the comparison report), diagnosis (tcpdump, ethtool) and the bench's peers (the
/// original tcpcopy and intercept build with gcc, make and libpcap).
const DEBIAN_PACKAGES: &[&str] = &[
    "clang",
    "libelf-dev",
    "zlib1g-dev",
    "m4",
    "pkg-config",
    "make",
    "iproute2",
    "procps",
    "nginx-light",
    "redis-server",
    "redis-tools",
    "tcpdump",
    "ethtool",
    "nftables",
    "prometheus",
    "tmux",
    "help2man",
    "chromium",
    "libpcap-dev",
];
const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "install ok installed")
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages: all {} present", DEBIAN_PACKAGES.len());
        return Ok(());
    }
    println!("setup: Debian packages: installing {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "installing Debian packages needs root: run `apt-get install {}` as root, then this again",
            missing.join(" ")
        );
    }
    status(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed: is a Debian package mirror reachable?")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed")
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is needed")?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        bail!("no nightly Rust toolchain: the eBPF programs need one (`rustup toolchain install nightly`)");
    }
    let sysroot = output(Command::new("rustc").arg(format!("+{NIGHTLY}")).args(["--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src for {NIGHTLY}: present");
        return Ok(());
    }
    println!("setup: rust-src for {NIGHTLY}: installing");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The nightly's own libLLVM (`libLLVM.so.22.1-rust-*`).
fn nightly_libllvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so.22")))
        .with_context(|| format!("no libLLVM.so.22* in {}: is the nightly's LLVM 22?", lib.display()))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    if bpf_linker_works() {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    println!("setup: bpf-linker {BPF_LINKER_VERSION}: building against the nightly's libLLVM (a few minutes)");
    let libllvm = nightly_libllvm(sysroot)?;
    let prefix = crate::workspace_root().join("target/xtask/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    let rustflags = format!("-L {} -C link-arg=-Wl,-rpath,{}", prefix_lib.display(), sysroot.join("lib").display());
    status(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--no-default-features"])
            .args(["--features", BPF_LINKER_LLVM_FEATURE])
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", rustflags)
            .env_remove("CARGO_TARGET_DIR"),
    )
    .context("building bpf-linker failed (it needs a C toolchain and the nightly's libLLVM)")?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// Python tools from PyPI, in a virtual environment of the workspace's own
/// ([`PYTHON_TOOLS`]): kubernetes-validate checks the Kubernetes example's objects against the
/// API's schemas, with no cluster.
const PYTHON_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "1.37.0")];
/// Where they live, under the workspace root (the tests run its `bin/python`).
pub const PYTHON_TOOLS: &str = "target/python-tools";

fn python_packages() -> anyhow::Result<()> {
    let venv = crate::workspace_root().join(PYTHON_TOOLS);
    let python = venv.join("bin/python");
    if !python.exists() {
        println!("setup: Python tools: creating {}", venv.display());
        status(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    for (name, version) in PYTHON_PACKAGES {
        let shown = Command::new(&python).args(["-m", "pip", "show", name]).output();
        let wanted = format!("Version: {version}");
        if shown.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).lines().any(|l| l == wanted)) {
            println!("setup: {name} {version}: present");
            continue;
        }
        println!("setup: {name} {version}: installing (pip)");
        status(Command::new(&python).args(["-m", "pip", "install", "--quiet", &format!("{name}=={version}")]))?;
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    python_packages()?;
    let sysroot = nightly_sysroot()?;
    rust_src()?;
    bpf_linker(&sysroot)
}
