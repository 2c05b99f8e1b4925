//! The Debian package `cargo xtask package` builds (and `cargo xtask test` builds before the
//! tests): what it holds, units systemd accepts without a warning, man pages, binaries that run.

use std::{path::PathBuf, process::Command};

fn package() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/package"));
    let deb = std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb")));
    deb.unwrap_or_else(|| panic!("no .deb in {}: build it with `cargo xtask package`", dir.display()))
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_package_holds_binaries_units_defaults_and_man_pages_that_work() {
    let deb = package();
    let (ok, contents) = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(ok, "{contents}");
    for path in [
        "./usr/bin/copier",
        "./usr/bin/intercept",
        "./lib/systemd/system/xdpcopy-copier.service",
        "./lib/systemd/system/xdpcopy-intercept.service",
        "./etc/default/xdpcopy-copier",
        "./etc/default/xdpcopy-intercept",
        "./usr/share/man/man1/copier.1.gz",
        "./usr/share/man/man1/intercept.1.gz",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "no {path} in\n{contents}");
    }
    let (ok, info) = output(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(ok && info.contains("Depends: libc6, libelf1, zlib1g, adduser"), "{info}");
    assert!(info.contains("postinst"), "creates the xdpcopy user: {info}");

    let root = tempfile::tempdir().unwrap();
    let (ok, out) = output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root.path()));
    assert!(ok, "{out}");
    for (binary, unit) in [("copier", "xdpcopy-copier"), ("intercept", "xdpcopy-intercept")] {
        let bin = root.path().join("usr/bin").join(binary);
        let (ok, version) = output(Command::new(&bin).arg("--version"));
        assert!(ok && version.contains("0.1.0"), "{version}");
        let (ok, page) =
            output(Command::new("zcat").arg(root.path().join(format!("usr/share/man/man1/{binary}.1.gz"))));
        assert!(ok && page.contains(&format!(".TH {}", binary.to_uppercase())), "{page}");
        // The unit as shipped, pointed at the extracted files: systemd must accept every line.
        let text = std::fs::read_to_string(root.path().join(format!("lib/systemd/system/{unit}.service"))).unwrap();
        assert!(text.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK"));
        assert!(text.contains("Restart=on-failure") && text.contains("User=xdpcopy"));
        let local = text
            .replace("/usr/bin/", &format!("{}/usr/bin/", root.path().display()))
            .replace("/etc/default/", &format!("{}/etc/default/", root.path().display()));
        let copy = root.path().join(format!("{unit}.service"));
        std::fs::write(&copy, local).unwrap();
        let (ok, said) = output(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy));
        assert!(ok && said.trim().is_empty(), "systemd-analyze verify {unit}: {said}");
    }
}
