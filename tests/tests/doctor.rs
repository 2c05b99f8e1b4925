//! `copier doctor` on the test bed: a healthy path, and each fault provoked in turn, with the
//! diagnosis it must give and exit status 5.

use std::{net::SocketAddr, time::Duration};

use xdpcopy_testbed::{
    bins,
    servers::Nginx,
    topology::{addr, iface},
    Host, Process, Testbed,
};

fn doctor(tb: &Testbed, map: &str, intercepts: &str) -> Process {
    let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
    cmd.args(["doctor", "-x", map, "-s", intercepts, "-c", "10.100.1.50"]);
    let mut p = tb.start("doctor", cmd).unwrap();
    p.wait_timeout(Duration::from_secs(30)).unwrap();
    p
}

#[test]
fn the_doctor_passes_a_working_path_and_names_each_fault() {
    let tb = Testbed::new().unwrap();
    let target = SocketAddr::new(addr::TARGET.into(), 8080);
    let _nginx = Nginx::start(&tb, Host::Target, "target-nginx", target).unwrap();
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &format!("{target},{}:9999", addr::TARGET)]);
    let mut intercept = tb.start("intercept", cmd).unwrap();
    intercept.wait_for_line(Duration::from_secs(20), |l| l.contains("XDP program attached")).unwrap();
    let control = addr::ASSIST_CONTROL.to_string();

    let mut ok = doctor(&tb, &format!("80-{target}"), &control);
    assert_eq!(ok.try_status().unwrap().and_then(|s| s.code()), Some(0), "{}", ok.describe());
    assert!(ok.stdout().contains(&format!("target {target}: OK")), "{}", ok.describe());

    let mut closed = doctor(&tb, &format!("80-{}:9999", addr::TARGET), &control);
    assert_eq!(closed.try_status().unwrap().and_then(|s| s.code()), Some(5), "{}", closed.describe());
    assert!(closed.stdout().contains("nothing listens on that port"), "{}", closed.describe());

    let mut nobody = doctor(&tb, &format!("80-{target}"), &format!("{control}:36599"));
    assert_eq!(nobody.try_status().unwrap().and_then(|s| s.code()), Some(5), "{}", nobody.describe());
    assert!(nobody.stdout().contains("FAULT: intercept"), "{}", nobody.describe());

    // The assistant host forwards IP: the intercept says so, and the doctor names it.
    intercept.signal(libc::SIGINT).unwrap();
    intercept.wait_timeout(Duration::from_secs(10)).unwrap();
    tb.assist().sysctl("net.ipv4.ip_forward", "1").unwrap();
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target.to_string()]);
    let mut intercept = tb.start("intercept-forwarding", cmd).unwrap();
    intercept.wait_for_line(Duration::from_secs(20), |l| l.contains("XDP program attached")).unwrap();
    assert!(intercept.stderr().contains("this host forwards IP"), "{}", intercept.describe());
    let mut forwards = doctor(&tb, &format!("80-{target}"), &control);
    assert_eq!(forwards.try_status().unwrap().and_then(|s| s.code()), Some(5), "{}", forwards.describe());
    assert!(forwards.stdout().contains("its host forwards IP"), "{}", forwards.describe());
    assert!(forwards.stdout().contains(&format!("target {target}: OK")), "the path itself works");
    tb.assist().sysctl("net.ipv4.ip_forward", "0").unwrap();

    // The test host loses its route back through the assistant host.
    tb.target.ip(&["route", "del", addr::CLIENT_NET]).unwrap();
    let mut lost = doctor(&tb, &format!("80-{target}"), &control);
    assert_eq!(lost.try_status().unwrap().and_then(|s| s.code()), Some(5), "{}", lost.describe());
    assert!(lost.stdout().contains("no SYN-ACK reached any intercept"), "{}", lost.describe());
    assert!(lost.stdout().contains("ip route get 10.100.1.50"), "{}", lost.describe());
}

/// The MTU: a jumbo path that works, then one with a link between that drops large packets
/// silently (nftables on the test host stands for it), then an online interface whose frames
/// copy mode would not copy whole.
#[test]
fn the_doctor_names_an_mtu_mismatch_on_the_path_and_on_the_online_interface() {
    let tb = Testbed::new().unwrap();
    tb.production_mtu(9000).unwrap();
    // The test server's SYN-ACKs say MSS 8960, as on a host whose every link is jumbo.
    let via = addr::ASSIST.to_string();
    tb.target.ip(&["route", "change", addr::CLIENT_NET, "via", &via, "advmss", "8960"]).unwrap();
    let target = SocketAddr::new(addr::TARGET.into(), 8080);
    let _nginx = Nginx::start(&tb, Host::Target, "target-nginx", target).unwrap();
    let mut cmd = tb.intercept_command(Host::Assist);
    cmd.args(["--iface", iface::ASSIST_TO_TARGET, "--target", &target.to_string()]);
    let mut intercept = tb.start("intercept", cmd).unwrap();
    intercept.wait_for_line(Duration::from_secs(20), |l| l.contains("XDP program attached")).unwrap();
    let run = |name: &str| {
        let mut cmd = tb.command(Host::Online, bins::xdpcopy("copier"));
        cmd.args(["doctor", "-x", &format!("80-{target}"), "-s", &addr::ASSIST_CONTROL.to_string()]).args([
            "-c",
            "10.100.1.50",
            "--iface",
            iface::ONLINE_TO_CLIENT,
        ]);
        let mut p = tb.start(name, cmd).unwrap();
        p.wait_timeout(Duration::from_secs(30)).unwrap();
        p
    };

    let mut ok = run("doctor-jumbo");
    assert_eq!(ok.try_status().unwrap().and_then(|s| s.code()), Some(0), "{}", ok.describe());
    assert!(
        ok.stdout().contains(&format!("target {target}: OK: packets of 9000 bytes reach it whole")),
        "{}",
        ok.describe()
    );
    assert!(ok.stdout().contains("online interface to-client: OK: MTU 9000"), "{}", ok.describe());

    tb.drop_input(Host::Target, "xdpcopy_mtu", &["ip", "length", ">", "1500"]).unwrap();
    let mut hole = run("doctor-black-hole");
    assert_eq!(hole.try_status().unwrap().and_then(|s| s.code()), Some(5), "{}", hole.describe());
    assert!(hole.stdout().contains("MTU mismatch: packets of 9000 bytes"), "{}", hole.describe());
    assert!(hole.stdout().contains("ip link set to-target mtu SIZE"), "{}", hole.describe());
    tb.remove_table(Host::Target, "xdpcopy_mtu").unwrap();

    tb.online.ip(&["link", "set", iface::ONLINE_TO_CLIENT, "mtu", "9500"]).unwrap();
    let mut big = run("doctor-online-mtu");
    assert_eq!(big.try_status().unwrap().and_then(|s| s.code()), Some(5), "{}", big.describe());
    assert!(big.stdout().contains("online interface to-client: its MTU 9500"), "{}", big.describe());
    assert!(big.stdout().contains(&format!("target {target}: OK: packets of 9000")), "the path itself works");
}
