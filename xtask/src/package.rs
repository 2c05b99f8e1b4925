//! `cargo xtask package`: a Debian package of both binaries, their systemd units and
//! environment files (`packaging/`), and man pages made from their `--help` by help2man.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// Where a file of the package goes, from where in the workspace, with which mode.
const FILES: &[(&str, &str, u32)] = &[
    ("target/release/copier", "usr/bin/copier", 0o755),
    ("target/release/intercept", "usr/bin/intercept", 0o755),
    ("packaging/systemd/xdpcopy-copier.service", "lib/systemd/system/xdpcopy-copier.service", 0o644),
    ("packaging/systemd/xdpcopy-intercept.service", "lib/systemd/system/xdpcopy-intercept.service", 0o644),
    ("packaging/default/xdpcopy-copier", "etc/default/xdpcopy-copier", 0o644),
    ("packaging/default/xdpcopy-intercept", "etc/default/xdpcopy-intercept", 0o644),
    ("README.md", "usr/share/doc/xdpcopy/README.md", 0o644),
    ("packaging/debian/postinst", "DEBIAN/postinst", 0o755),
];

/// The binaries and what their man pages say they are.
const MAN_PAGES: &[(&str, &str)] = &[
    ("copier", "copy live TCP traffic, or replay a capture, to a test server"),
    ("intercept", "steal a test server's replies and serve their header facts to copiers"),
];

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(to.parent().expect("a file in a directory"))?;
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds `target/package/xdpcopy_VERSION_ARCH.deb` from the release binaries; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    let root = crate::workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(Command::new("dpkg").arg("--print-architecture").output()?.stdout)?;
    let name = format!("xdpcopy_{version}_{}", arch.trim());
    let out = root.join("target/package");
    let stage = out.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    for (from, to, mode) in FILES {
        copy(&root.join(from), &stage.join(to), *mode)?;
    }
    let man = stage.join("usr/share/man/man1");
    std::fs::create_dir_all(&man)?;
    for (binary, what) in MAN_PAGES {
        let page = man.join(format!("{binary}.1"));
        let bin = root.join("target/release").join(binary);
        status(Command::new("help2man").args(["--no-info", "--name", what, "--output"]).arg(&page).arg(&bin))?;
        status(Command::new("gzip").args(["-9n"]).arg(&page))?;
    }
    let control = format!(
        "Package: xdpcopy\nVersion: {version}\nArchitecture: {}\nMaintainer: xdpcopy <xdpcopy@localhost>\n\
         Depends: libc6, libelf1, zlib1g, adduser\nSection: net\nPriority: optional\n\
         Description: copy live TCP traffic to a test server (XDP and AF_XDP)\n \
         copier replays production's client sessions to a test server; intercept steals the\n \
         test server's replies so they never reach the real clients.\n",
        arch.trim()
    );
    std::fs::write(stage.join("DEBIAN/control"), control)?;
    std::fs::write(stage.join("DEBIAN/conffiles"), "/etc/default/xdpcopy-copier\n/etc/default/xdpcopy-intercept\n")?;
    let deb = out.join(format!("{name}.deb"));
    status(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&stage).arg(&deb))?;
    println!("xtask: {}", deb.display());
    Ok(deb)
}
