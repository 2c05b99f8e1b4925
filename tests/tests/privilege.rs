//! Least privilege: both binaries run as an unprivileged user with exactly the capabilities the
//! README names (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK), and say which
//! one is missing otherwise.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use xdpcopy_testbed::{
    bins, pcapgen,
    servers::Nginx,
    topology::{addr, iface},
    Host, Testbed,
};

const CAPS: &str = "+bpf,+perfmon,+net_admin,+net_raw,+ipc_lock";

/// `program args` as user nobody with `caps` (inheritable and ambient, so they survive exec).
fn unprivileged(tb: &Testbed, host: Host, caps: &str, program: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = tb.command(host, "setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args([format!("--inh-caps=-all,{caps}"), format!("--ambient-caps=-all,{caps}")])
        .arg("--bounding-set=-all,".to_owned() + caps)
        .arg("--")
        .arg(program)
        .args(args);
    cmd
}

/// The test bed's directory and a file in it, readable by nobody.
fn readable(tb: &Testbed, file: &Path) {
    std::fs::set_permissions(tb.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn both_binaries_replay_as_nobody_with_five_capabilities_and_name_a_missing_one() {
    let tb = Testbed::new().unwrap();
    let target_http = SocketAddr::new(addr::TARGET.into(), 8080);
    let target = Nginx::start(&tb, Host::Target, "target-nginx", target_http).unwrap();
    let sessions = pcapgen::Sessions { count: 20, requests_per_session: 1, gap_us: 1_000 };
    let pcap = tb.dir().join("sessions.pcap");
    pcapgen::write_http_sessions(&pcap, (addr::ONLINE, 80), sessions).unwrap();
    readable(&tb, &pcap);

    let intercept_args =
        ["--iface", iface::ASSIST_TO_TARGET, "--target", &target_http.to_string(), "--allow", addr::CONTROL_NETS];
    let cmd = unprivileged(&tb, Host::Assist, CAPS, &bins::xdpcopy("intercept"), &intercept_args);
    let mut intercept = tb.start("intercept", cmd).unwrap();
    intercept.wait_for_line(Duration::from_secs(20), |l| l.contains("XDP program attached")).unwrap();

    let map = format!("80-{target_http}");
    let control = addr::ASSIST_CONTROL.to_string();
    let copier_args = ["-x", map.as_str(), "-s", control.as_str(), "-i", pcap.to_str().unwrap()];
    let cmd = unprivileged(&tb, Host::Online, CAPS, &bins::xdpcopy("copier"), &copier_args);
    let mut copier = tb.start("copier", cmd).unwrap();
    assert!(copier.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", copier.describe());
    assert!(copier.stderr().contains("AF_XDP transmit"), "{}", copier.describe());
    assert_eq!(target.requests().len(), 20, "{}", copier.describe());

    // Without CAP_NET_RAW the copier, without CAP_PERFMON the intercept: refused at start,
    // naming what is missing, with nothing attached.
    let cmd =
        unprivileged(&tb, Host::Online, "+bpf,+perfmon,+net_admin,+ipc_lock", &bins::xdpcopy("copier"), &copier_args);
    let mut short = tb.start("copier-without-net-raw", cmd).unwrap();
    assert_eq!(short.wait_timeout(Duration::from_secs(30)).unwrap().code(), Some(1), "{}", short.describe());
    assert!(short.stderr().contains("copier needs CAP_NET_RAW"), "{}", short.describe());
    let cmd = unprivileged(
        &tb,
        Host::Target,
        "+bpf,+net_admin,+net_raw,+ipc_lock",
        &bins::xdpcopy("intercept"),
        &["--iface", iface::TARGET_TO_ASSIST, "--target", &target_http.to_string(), "--allow-unauthenticated"],
    );
    let mut short = tb.start("intercept-without-perfmon", cmd).unwrap();
    assert_eq!(short.wait_timeout(Duration::from_secs(30)).unwrap().code(), Some(1), "{}", short.describe());
    assert!(short.stderr().contains("intercept needs CAP_PERFMON"), "{}", short.describe());
    assert_eq!(tb.target.xdp_program(iface::TARGET_TO_ASSIST).unwrap(), None);
}
