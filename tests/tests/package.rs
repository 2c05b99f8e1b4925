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

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The capabilities a file grants, as Kubernetes names them (no `CAP_` prefix), in order.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(workspace().join("packaging/systemd/xdpcopy-copier.service")).unwrap();
    let line = unit.lines().find_map(|l| l.strip_prefix("AmbientCapabilities=")).expect("the unit grants some");
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_owned()).collect()
}

/// The Kubernetes example: objects the API accepts (kubernetes-validate against its schemas,
/// strict: no unknown field), each container granted exactly what the systemd units grant.
#[test]
fn the_kubernetes_example_is_valid_and_grants_what_the_units_grant() {
    let python = workspace().join("target/python-tools/bin/python");
    assert!(python.exists(), "no {}: run `cargo xtask setup`", python.display());
    let manifest = workspace().join("packaging/kubernetes/xdpcopy.yaml");
    let (ok, said) = output(Command::new(&python).args(["-m", "kubernetes_validate", "--strict"]).arg(&manifest));
    assert!(ok, "{said}");
    for object in ["namespace/xdpcopy", "configmap/xdpcopy-flags", "daemonset/copier", "daemonset/intercept"] {
        assert!(said.contains(&format!("passed for resource {object}")), "{object}: {said}");
    }
    assert!(!said.contains("ERROR") && !said.contains("WARN"), "{said}");

    let text = std::fs::read_to_string(&manifest).unwrap();
    let granted: Vec<Vec<String>> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("add: [")?.strip_suffix(']').map(str::to_owned))
        .map(|list| list.split(',').map(|c| c.trim().trim_matches('"').to_owned()).collect())
        .collect();
    assert_eq!(granted, vec![unit_capabilities(); 2], "copier and intercept, as the units");
    assert_eq!(text.matches("drop: [\"ALL\"]").count(), 2, "and nothing else");
    assert!(!text.contains("privileged: true"));
}

/// The container image installs every library the binaries link beyond what its base image
/// (Debian's libc6 and libgcc-s1) holds, and copies both binaries.
#[test]
fn the_container_image_installs_every_library_the_binaries_link() {
    let dockerfile = std::fs::read_to_string(workspace().join("packaging/container/Dockerfile")).unwrap();
    let installs = dockerfile.lines().find(|l| l.contains("apt-get install")).expect("an install line");
    assert!(dockerfile.contains("COPY target/release/copier target/release/intercept /usr/bin/"), "{dockerfile}");
    let in_base = ["linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2"];
    let package_of = |soname: &str| match soname {
        "libelf.so.1" => Some("libelf1"),
        "libz.so.1" => Some("zlib1g"),
        _ => None,
    };
    for binary in ["copier", "intercept"] {
        let path = workspace().join("target/release").join(binary);
        let (ok, linked) = output(Command::new("ldd").arg(&path));
        assert!(ok, "ldd {}: {linked}", path.display());
        for soname in linked.lines().filter_map(|l| l.split_whitespace().next()) {
            let soname = soname.rsplit('/').next().unwrap();
            if in_base.contains(&soname) {
                continue;
            }
            let package = package_of(soname).unwrap_or_else(|| panic!("{binary} links {soname}: which package?"));
            assert!(
                installs.split_whitespace().any(|w| w == package),
                "{package} ({soname}) is not installed: {installs}"
            );
        }
    }
}
