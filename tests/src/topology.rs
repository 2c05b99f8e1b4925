//! The four hosts of `docs/architecture.md` (the test bed) and the links between them, dual-stack.

use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::Context as _;

use crate::{
    gre::{Gre, GreMirror},
    netns::{self, Netns},
    process::Process,
};

/// Interface names: in each namespace, the link towards host X is `to-X`.
pub mod iface {
    pub const CLIENT_TO_ONLINE: &str = "to-online";
    pub const ONLINE_TO_CLIENT: &str = "to-client";
    pub const ONLINE_TO_TARGET: &str = "to-target";
    pub const ONLINE_TO_ASSIST: &str = "to-assist";
    pub const TARGET_TO_ONLINE: &str = "to-online";
    pub const TARGET_TO_ASSIST: &str = "to-assist";
    pub const ASSIST_TO_TARGET: &str = "to-target";
    pub const ASSIST_TO_ONLINE: &str = "to-online";
    /// On the online host, after [`super::Testbed::mirror_client_link`]: the NIC that receives
    /// a copy of every frame on the client link (as a SPAN port would), and its feeding end.
    pub const ONLINE_MIRROR: &str = "mirror";
    pub const ONLINE_MIRROR_FEED: &str = "mirror-feed";
}

/// The tunnel device of [`Testbed::mirror_client_link_through`] (a veth for
/// [`Testbed::mirror_client_link_gre`], whose far end is read).
pub const MIRROR_TUNNEL: &str = "mirror-tun";
const MIRROR_TUNNEL_FAR: &str = "mirror-tun-far";

/// TX and RX queues of the online host's link to the test server: one per copier worker.
pub const ONLINE_TO_TARGET_QUEUES: u32 = 2;

/// Addresses (each /24, and the /64 of [`v6`]). Fixed: namespaces keep parallel test beds apart.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Every host's IPv6 address on a link: `10.100.N.X` is `fd00:100:N::X`, so tests name one
    /// constant for either family.
    pub const fn v6(v4: Ipv4Addr) -> Ipv6Addr {
        let [_, _, net, host] = v4.octets();
        Ipv6Addr::new(0xfd00, 0x100, net as u16, 0, 0, 0, 0, host as u16)
    }

    /// The /64 of [`v6`] for a `10.100.N.0/24` network.
    pub fn v6_net(net_v4: &str) -> String {
        let net: Ipv4Addr = net_v4.split('/').next().and_then(|a| a.parse().ok()).expect("a /24 of the test bed");
        format!("{}/64", v6(net))
    }

    /// The real clients' network.
    pub const CLIENT_NET: &str = "10.100.1.0/24";
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 2);
    /// The online server, as the clients reach it.
    pub const ONLINE: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
    /// The test server's network.
    pub const TARGET_NET: &str = "10.100.2.0/24";
    pub const ONLINE_TO_TARGET: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 1);
    /// The test server, as the copier reaches it.
    pub const TARGET: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 2);
    pub const TARGET_TO_ASSIST: Ipv4Addr = Ipv4Addr::new(10, 100, 3, 1);
    /// The assistant host, the test server's route back to the client network.
    pub const ASSIST: Ipv4Addr = Ipv4Addr::new(10, 100, 3, 2);
    /// The control link that carries the intercept ↔ copier protocol.
    pub const ONLINE_CONTROL: Ipv4Addr = Ipv4Addr::new(10, 100, 4, 1);
    pub const ASSIST_CONTROL: Ipv4Addr = Ipv4Addr::new(10, 100, 4, 2);
    /// The control link's networks: intercepts started without a secret allow these only.
    pub const CONTROL_NETS: &str = "10.100.4.0/24,fd00:100:4::/64";
}

/// Which of the four hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Client,
    Online,
    Target,
    Assist,
}

/// One test bed: four namespaces (three without the assistant host), their links, and a
/// scratch directory for configs and logs.
pub struct Testbed {
    // Field order is drop order: namespaces go before the directory their logs live in.
    pub client: Netns,
    pub online: Netns,
    pub target: Netns,
    assist: Option<Netns>,
    dir: tempfile::TempDir,
}

fn link(a: &Netns, a_if: &str, a_ip: Ipv4Addr, b: &Netns, b_if: &str, b_ip: Ipv4Addr) -> anyhow::Result<()> {
    link_with_queues(a, a_if, a_ip, b, b_if, b_ip, 1)
}

fn link_with_queues(
    a: &Netns,
    a_if: &str,
    a_ip: Ipv4Addr,
    b: &Netns,
    b_if: &str,
    b_ip: Ipv4Addr,
    queues: u32,
) -> anyhow::Result<()> {
    let q = queues.to_string();
    netns::ip(&[
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ])?;
    for (ns, ifname, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname])?;
        // nodad: usable at once, not after duplicate address detection's second or two.
        ns.ip(&["-6", "addr", "add", &format!("{}/64", addr::v6(ip)), "dev", ifname, "nodad"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

impl Testbed {
    /// Builds the four-host topology. Needs root; fails loudly without it.
    pub fn new() -> anyhow::Result<Self> {
        let tb = Self::hosts(true)?;
        use self::{addr as a, iface as i};
        let assist = tb.assist();
        link(&tb.target, i::TARGET_TO_ASSIST, a::TARGET_TO_ASSIST, assist, i::ASSIST_TO_TARGET, a::ASSIST)?;
        link(&tb.online, i::ONLINE_TO_ASSIST, a::ONLINE_CONTROL, assist, i::ASSIST_TO_ONLINE, a::ASSIST_CONTROL)?;
        // The assistant host reaches the test server too (as a real one would).
        assist.ip(&["route", "add", a::TARGET_NET, "via", &a::TARGET_TO_ASSIST.to_string()])?;
        assist.ip(&[
            "-6",
            "route",
            "add",
            &a::v6_net(a::TARGET_NET),
            "via",
            &a::v6(a::TARGET_TO_ASSIST).to_string(),
        ])?;
        // The test server answers the copied client addresses through the assistant host...
        tb.target.ip(&["route", "add", a::CLIENT_NET, "via", &a::ASSIST.to_string()])?;
        tb.target.ip(&["-6", "route", "add", &a::v6_net(a::CLIENT_NET), "via", &a::v6(a::ASSIST).to_string()])?;
        // ...although their packets arrive from the online host: no reverse-path filter there
        // (IPv6 has none unless a firewall adds one).
        for key in ["all", "default", i::TARGET_TO_ONLINE] {
            tb.target.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        Ok(tb)
    }

    /// The test bed of `intercept --on-target`: no assistant host. The test server's only
    /// route to the copied clients is its default one, back over the link the copies arrive
    /// by, as a test host's usually is; so its reverse-path filter can stay strict, and is.
    /// The online host does not forward: a reply that escaped would end on its link.
    pub fn without_assistant() -> anyhow::Result<Self> {
        let tb = Self::hosts(false)?;
        use self::addr as a;
        tb.target.ip(&["route", "add", "default", "via", &a::ONLINE_TO_TARGET.to_string()])?;
        tb.target.ip(&["-6", "route", "add", "default", "via", &a::v6(a::ONLINE_TO_TARGET).to_string()])?;
        for key in ["all", "default", iface::TARGET_TO_ONLINE] {
            tb.target.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "1")?;
        }
        Ok(tb)
    }

    /// The namespaces, the client's link to the online host and the online host's to the test
    /// server. Needs root; fails loudly without it.
    fn hosts(assistant: bool) -> anyhow::Result<Self> {
        crate::require_root();
        netns::sweep_stale();
        let stem = netns::unique_stem();
        let dir = tempfile::Builder::new().prefix(&format!("{stem}-")).tempdir()?;
        let tb = Self {
            client: Netns::create(format!("{stem}-client"))?,
            online: Netns::create(format!("{stem}-online"))?,
            target: Netns::create(format!("{stem}-target"))?,
            assist: assistant.then(|| Netns::create(format!("{stem}-assist"))).transpose()?,
            dir,
        };
        use self::{addr as a, iface as i};
        link(&tb.client, i::CLIENT_TO_ONLINE, a::CLIENT, &tb.online, i::ONLINE_TO_CLIENT, a::ONLINE)?;
        link_with_queues(
            &tb.online,
            i::ONLINE_TO_TARGET,
            a::ONLINE_TO_TARGET,
            &tb.target,
            i::TARGET_TO_ONLINE,
            a::TARGET,
            ONLINE_TO_TARGET_QUEUES,
        )?;
        Ok(tb)
    }

    /// The assistant host. Panics in a test bed [`Self::without_assistant`].
    pub fn assist(&self) -> &Netns {
        self.assist.as_ref().expect("this test bed has no assistant host")
    }

    /// Sets the MTU of the production side: both ends of the client ↔ online and online ↔ test
    /// server links (the assistant host's link keeps its own). Before any XDP program is
    /// attached: a veth takes an MTU above a page only with a program that handles frags.
    pub fn production_mtu(&self, mtu: u32) -> anyhow::Result<()> {
        use self::iface as i;
        let mtu = mtu.to_string();
        for (ns, ifname) in [
            (&self.client, i::CLIENT_TO_ONLINE),
            (&self.online, i::ONLINE_TO_CLIENT),
            (&self.online, i::ONLINE_TO_TARGET),
            (&self.target, i::TARGET_TO_ONLINE),
        ] {
            ns.ip(&["link", "set", ifname, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Drops `percent` % of the TCP segments `host` receives for `port`, at random (nftables
    /// `numgen`: this kernel has no netem).
    pub fn lose(&self, host: Host, port: u16, percent: u32) -> anyhow::Result<()> {
        let (port, percent) = (port.to_string(), percent.to_string());
        let matching = ["tcp", "dport", &port, "numgen", "random", "mod", "100", "<", &percent];
        self.drop_input(host, "xdpcopy_loss", &matching)
    }

    /// Drops what `host` receives that matches the nftables expression `matching`, by a rule in
    /// a table of its own, `table` ([`Self::remove_table`] takes it away again).
    pub fn drop_input(&self, host: Host, table: &str, matching: &[&str]) -> anyhow::Result<()> {
        let chain = ["add", "chain", "inet", table, "input", "{ type filter hook input priority 0; }"];
        let rule = ["add", "rule", "inet", table, "input"].into_iter().chain(matching.iter().copied()).chain(["drop"]);
        for args in [vec!["add", "table", "inet", table], chain.to_vec(), rule.collect()] {
            self.nft(host, &args)?;
        }
        Ok(())
    }

    /// Deletes an nftables table of [`Self::drop_input`].
    pub fn remove_table(&self, host: Host, table: &str) -> anyhow::Result<()> {
        self.nft(host, &["delete", "table", "inet", table])
    }

    fn nft(&self, host: Host, args: &[&str]) -> anyhow::Result<()> {
        let out = self.host(host).exec("nft", args)?;
        anyhow::ensure!(out.status.success(), "nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Mirrors every frame the online host's client link receives or sends onto a second NIC
    /// of the online host, [`iface::ONLINE_MIRROR`] (tc mirred, like a switch's SPAN port).
    pub fn mirror_client_link(&self) -> anyhow::Result<()> {
        use self::iface as i;
        let ns = &self.online;
        ns.ip(&["link", "add", i::ONLINE_MIRROR_FEED, "type", "veth", "peer", "name", i::ONLINE_MIRROR])?;
        for ifname in [i::ONLINE_MIRROR_FEED, i::ONLINE_MIRROR] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        self.mirror_frames_into(i::ONLINE_MIRROR_FEED)
    }

    /// Like [`Self::mirror_client_link`], but the mirror arrives encapsulated, as a cloud's
    /// traffic mirroring sends it: the client link's frames go into `tunnel` (a real vxlan,
    /// gretap or erspan device of the online host), whose packets leave on an underlay link
    /// (`10.100.9.1` to `10.100.9.2`, MTU 1600 to hold a full frame and its outer headers) and
    /// arrive on [`iface::ONLINE_MIRROR`]. That end has no address: only the copier takes them.
    pub fn mirror_client_link_through(&self, tunnel: &[&str]) -> anyhow::Result<()> {
        let ns = &self.online;
        self.mirror_underlay()?;
        let mut add = vec!["link", "add", MIRROR_TUNNEL, "mtu", "1500"];
        add.extend_from_slice(tunnel);
        add.extend(["local", "10.100.9.1", "remote", "10.100.9.2"]);
        ns.ip(&add)?;
        ns.ip(&["link", "set", MIRROR_TUNNEL, "up"])?;
        self.mirror_frames_into(MIRROR_TUNNEL)
    }

    /// [`Self::mirror_client_link_through`] a GRE tunnel, for a kernel without GRE devices:
    /// the frames are mirrored to a veth whose far end a [`GreMirror`] reads, and it sends
    /// them on in GRE. Mirrored while the returned value lives.
    pub fn mirror_client_link_gre(&self, kind: Gre) -> anyhow::Result<GreMirror> {
        let ns = &self.online;
        let mac = self.mirror_underlay()?;
        ns.ip(&["link", "add", MIRROR_TUNNEL, "type", "veth", "peer", "name", MIRROR_TUNNEL_FAR])?;
        for ifname in [MIRROR_TUNNEL, MIRROR_TUNNEL_FAR] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        // Frames leave in wire-sized pieces, as a switch mirrors them: the clients' large
        // segments arrive as GSO packets, which the veth would otherwise hand on whole.
        let out = ns.exec("ethtool", &["-K", MIRROR_TUNNEL, "tso", "off", "gso", "off", "sg", "off"])?;
        anyhow::ensure!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
        let hex: Vec<u8> = mac.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
        let mac: [u8; 6] = hex.try_into().map_err(|_| anyhow::anyhow!("bad MAC {mac:?}"))?;
        let route = ([10, 100, 9, 1], [10, 100, 9, 2]);
        let relay = GreMirror::start(ns, kind, MIRROR_TUNNEL_FAR, iface::ONLINE_MIRROR_FEED, route, mac)?;
        self.mirror_frames_into(MIRROR_TUNNEL)?;
        Ok(relay)
    }

    /// The tunnels' underlay: [`iface::ONLINE_MIRROR_FEED`] (`10.100.9.1`) to
    /// [`iface::ONLINE_MIRROR`], which answers for `10.100.9.2` without having it. Returns the
    /// latter's MAC.
    fn mirror_underlay(&self) -> anyhow::Result<String> {
        use self::iface as i;
        let ns = &self.online;
        ns.ip(&[
            "link",
            "add",
            i::ONLINE_MIRROR_FEED,
            "mtu",
            "1600",
            "type",
            "veth",
            "peer",
            "name",
            i::ONLINE_MIRROR,
        ])?;
        ns.ip(&["link", "set", i::ONLINE_MIRROR, "mtu", "1600"])?;
        ns.ip(&["addr", "add", "10.100.9.1/24", "dev", i::ONLINE_MIRROR_FEED])?;
        for ifname in [i::ONLINE_MIRROR_FEED, i::ONLINE_MIRROR] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        let mac = ns.exec("cat", &[&format!("/sys/class/net/{}/address", i::ONLINE_MIRROR)])?;
        let mac = String::from_utf8(mac.stdout)?.trim().to_owned();
        ns.ip(&["neigh", "add", "10.100.9.2", "lladdr", &mac, "dev", i::ONLINE_MIRROR_FEED, "nud", "permanent"])?;
        Ok(mac)
    }

    /// tc mirred: a copy of every frame the online host's client link receives or sends goes
    /// out of `into`.
    fn mirror_frames_into(&self, into: &str) -> anyhow::Result<()> {
        use self::iface as i;
        let ns = &self.online;
        let tc = |args: &[&str]| -> anyhow::Result<()> {
            let out = ns.exec("tc", args)?;
            anyhow::ensure!(out.status.success(), "tc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        tc(&["qdisc", "add", "dev", i::ONLINE_TO_CLIENT, "clsact"])?;
        for direction in ["ingress", "egress"] {
            tc(&[
                // u32 matching every frame: this kernel has no matchall classifier.
                "filter",
                "add",
                "dev",
                i::ONLINE_TO_CLIENT,
                direction,
                "protocol",
                "all",
                "u32",
                "match",
                "u32",
                "0",
                "0",
                "action",
                "mirred",
                "egress",
                "mirror",
                "dev",
                into,
            ])?;
        }
        Ok(())
    }

    /// Makes `iface` of `host` receive in a NAPI thread of its own, as a NIC's receive runs in
    /// the receiving host's softirq. Left alone, veth runs the receiver's whole stack (its XDP
    /// program, TCP, the application's wake-up) inside the sender's transmit call, billed to
    /// the sending process: a bench would charge the test server's TCP to the copier. GRO gives
    /// veth a NAPI instance even without an XDP program; `peer_iface` of `peer`, the sending
    /// end, loses TSO, without which veth bypasses NAPI for frames it could not aggregate
    /// (AF_XDP's and TCP's).
    pub fn receive_in_napi_thread(&self, host: Host, iface: &str, peer: Host, peer_iface: &str) -> anyhow::Result<()> {
        self.host(peer).exec("ethtool", &["-K", peer_iface, "tso", "off"])?;
        self.host(host).exec("ethtool", &["-K", iface, "gro", "on"])?;
        self.napi_threaded(host, iface)
    }

    /// Runs the NAPI instances `iface` of `host` has in a kernel thread of their own (veth has
    /// them while an XDP program is attached or GRO is on).
    pub fn napi_threaded(&self, host: Host, iface: &str) -> anyhow::Result<()> {
        let ns = self.host(host);
        ns.exec("sh", &["-c", &format!("echo 1 > /sys/class/net/{iface}/threaded")])?;
        let threaded = ns.exec("cat", &[&format!("/sys/class/net/{iface}/threaded")])?;
        anyhow::ensure!(
            String::from_utf8_lossy(&threaded.stdout).trim() == "1",
            "{iface}: threaded NAPI did not stick"
        );
        Ok(())
    }

    pub fn host(&self, host: Host) -> &Netns {
        match host {
            Host::Client => &self.client,
            Host::Online => &self.online,
            Host::Target => &self.target,
            Host::Assist => self.assist(),
        }
    }

    /// Scratch directory for configs and logs, removed with the test bed.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command that runs inside `host`; start it with [`Self::start`].
    pub fn command(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.host(host).command(program)
    }

    /// The intercept as the test bed runs it: without a secret, copiers are allowed from the
    /// control link's networks only (tests that need a secret add `--secret-file`).
    pub fn intercept_command(&self, host: Host) -> Command {
        let mut cmd = self.command(host, crate::bins::xdpcopy("intercept"));
        cmd.args(["--allow", addr::CONTROL_NETS]);
        cmd
    }

    /// Starts a command, output to files in [`Self::dir`].
    pub fn start(&self, name: &str, cmd: Command) -> anyhow::Result<Process> {
        Process::spawn(name, cmd, self.dir()).with_context(|| format!("starting {name}"))
    }

    /// Starts `program args...` inside `host`.
    pub fn spawn(
        &self,
        host: Host,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
    ) -> anyhow::Result<Process> {
        let mut cmd = self.command(host, program);
        cmd.args(args);
        self.start(name, cmd)
    }
}
