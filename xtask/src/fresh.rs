//! The fresh-machine check: xtask must build where `setup` has installed nothing yet.
//!
//! Built in an empty target directory, with `PKG_CONFIG_LIBDIR` pointing at nothing (no system
//! library can be found) and a `PATH` holding the stable toolchain's own binaries and the system's,
//! but not `~/.cargo/bin`: neither bpf-linker nor rustup's proxies, so no nightly either.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The stable toolchain's `bin` directory (its real `cargo` and `rustc`, not rustup's proxies).
fn stable_bin() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "--toolchain", "stable", "cargo"])
        .stderr(Stdio::inherit())
        .output()
        .context("running rustup (a fresh machine has rustup's stable toolchain)")?;
    if !out.status.success() {
        bail!("`rustup which --toolchain stable cargo` failed ({})", out.status);
    }
    let cargo = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(cargo.parent().context("cargo has no directory")?.to_path_buf())
}

/// `PATH` without any directory that holds bpf-linker or rustup, with `first` in front.
fn bare_path(first: &Path) -> anyhow::Result<OsString> {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let kept =
        std::env::split_paths(&current).filter(|dir| !dir.join("bpf-linker").exists() && !dir.join("rustup").exists());
    Ok(std::env::join_paths(std::iter::once(first.to_path_buf()).chain(kept))?)
}

pub fn check() -> anyhow::Result<()> {
    let bin = stable_bin()?;
    let path = bare_path(&bin)?;
    let target = std::env::temp_dir().join(format!("xdpcopy-fresh-xtask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    println!("xtask: fresh-machine check: building xtask in an empty target dir, no pkg-config libraries, no bpf-linker or nightly on PATH");

    let bare = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.current_dir(crate::workspace_root())
            .env("PATH", &path)
            .env("PKG_CONFIG_LIBDIR", "/nonexistent")
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("PKG_CONFIG_PATH")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO");
        cmd
    };
    // The environment must be as bare as it claims, or the check proves nothing.
    for tool in ["bpf-linker", "rustup"] {
        let found = bare("sh").args(["-c", &format!("command -v {tool}")]).output()?;
        if found.status.success() {
            bail!(
                "fresh-machine check: {tool} is still on its PATH ({})",
                String::from_utf8_lossy(&found.stdout).trim()
            );
        }
    }
    let status = bare(&bin.join("cargo").to_string_lossy())
        .args(["build", "--quiet", "--locked", "--package", "xtask"])
        .status()
        .context("running cargo for the fresh-machine check")?;
    let _ = std::fs::remove_dir_all(&target);
    if !status.success() {
        bail!("xtask does not build as on a fresh machine ({status}): it must depend on tooling crates only");
    }
    println!("xtask: fresh-machine check: xtask builds");
    Ok(())
}
