//! Who the test server sees: client address rewriting (`-c`), session multiplication with port
//! shifting (`-n`, `-f`), and sampling (`-r`). All decisions are pure functions of the flow, so a
//! session is treated the same way by every packet, every worker and every run.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use common::endpoint::Endpoint;

/// FNV-1a over the bytes: stable across runs and platforms (unlike `std`'s hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A flow hash that is the same in both directions (client→server and server→client), so
/// sharding by it keeps a session on one worker whichever side a packet comes from.
pub fn symmetric_flow_hash(a: &Endpoint, b: &Endpoint) -> u64 {
    let (lo, hi) = if (a.addr, a.port) <= (b.addr, b.port) { (a, b) } else { (b, a) };
    fnv1a(&[&lo.addr, &lo.port.to_be_bytes(), &hi.addr, &hi.port.to_be_bytes()])
}

/// `-r PCT`: whether a session is replayed. By flow hash, so all of a session or none of it.
pub fn sampled(percent: u8, client: &Endpoint, online: &Endpoint) -> bool {
    percent >= 100 || (symmetric_flow_hash(client, online) % 100) < percent as u64
}

/// `-c a,b,c` or `-c a-b`: the addresses copied clients appear from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAddrs(Vec<IpAddr>);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientAddrsError {
    #[error("{0:?} is not an IP address")]
    NotAnAddress(String),
    #[error("range {0:?}: both ends must be of one family, low to high, at most 65536 addresses")]
    BadRange(String),
    #[error("no client address given")]
    Empty,
}

impl FromStr for ClientAddrs {
    type Err = ClientAddrsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip = |t: &str| t.trim().parse::<IpAddr>().map_err(|_| ClientAddrsError::NotAnAddress(t.trim().into()));
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            // tcpcopy's `a.b.c.x`: every host of that /24, .1 to .254.
            if let Some(net) = item.strip_suffix(".x") {
                match format!("{net}.0").parse::<std::net::Ipv4Addr>() {
                    Ok(base) => out.extend((1..=254).map(|h| IpAddr::V4((u32::from(base) | h).into()))),
                    Err(_) => return Err(ClientAddrsError::NotAnAddress(item.into())),
                }
                continue;
            }
            match item.split_once('-') {
                None => out.push(ip(item)?),
                Some((lo, hi)) => {
                    let bad = || ClientAddrsError::BadRange(item.into());
                    match (ip(lo)?, ip(hi)?) {
                        (IpAddr::V4(lo), IpAddr::V4(hi)) => {
                            let (lo, hi) = (u32::from(lo), u32::from(hi));
                            if hi < lo || hi - lo >= 65536 {
                                return Err(bad());
                            }
                            out.extend((lo..=hi).map(|n| IpAddr::V4(n.into())));
                        }
                        (IpAddr::V6(lo), IpAddr::V6(hi)) => {
                            let (lo, hi) = (u128::from(lo), u128::from(hi));
                            if hi < lo || hi - lo >= 65536 {
                                return Err(bad());
                            }
                            out.extend((lo..=hi).map(|n| IpAddr::V6(n.into())));
                        }
                        _ => return Err(bad()),
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(ClientAddrsError::Empty);
        }
        Ok(Self(out))
    }
}

impl ClientAddrs {
    /// The addresses as few ranges (first, last), 16-byte addresses with IPv4 mapped, sorted: what
    /// the copier declares to the intercepts, which refuse announcements outside them.
    pub fn ranges(&self) -> Vec<([u8; 16], [u8; 16])> {
        let mut addrs: Vec<u128> =
            self.0.iter().map(|&ip| u128::from_be_bytes(Endpoint::from(SocketAddr::new(ip, 0)).addr)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for a in addrs {
            match ranges.last_mut() {
                Some(last) if last.1 + 1 == a => last.1 = a,
                _ => ranges.push((a, a)),
            }
        }
        ranges.into_iter().map(|(first, last)| (first.to_be_bytes(), last.to_be_bytes())).collect()
    }

    /// The first address given.
    pub fn first(&self) -> IpAddr {
        self.0[0]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The address for copy `copy` of a client: a client always maps to the same address for
    /// a given copy; different copies of a client spread over the list.
    pub fn for_client(&self, client: &[u8; 16], copy: u16) -> IpAddr {
        let i = (fnv1a(&[client]) + copy as u64) % self.0.len() as u64;
        self.0[i as usize]
    }
}

/// The source port of copy `copy` of a session (copy 0 keeps the client's port).
///
/// Ports are shifted by `copy × shift` inside 1024..=65535, a bijection for each copy, so copies
/// never land on the original's third of the range the way a plain wrap does. Remaining clashes
/// between live sessions are resolved by the session table, which probes for a free port.
pub fn shifted_port(port: u16, copy: u16, shift: u16) -> u16 {
    if copy == 0 {
        return port;
    }
    const LOW: u32 = 1024;
    const SPAN: u32 = 65536 - LOW;
    let base = if (port as u32) < LOW { port as u32 + LOW } else { port as u32 };
    (LOW + (base - LOW + copy as u32 * shift.max(1) as u32) % SPAN) as u16
}

/// The next port to try when `port` is taken (stays in 1024..=65535).
pub fn next_port(port: u16) -> u16 {
    if port == u16::MAX {
        1024
    } else {
        port.max(1023) + 1
    }
}

/// The replay source ports one worker of several may use: those ≡ `index` (mod `count`).
///
/// Workers own disjoint port classes, so two workers never replay from the same client
/// endpoint (a clash `-c` or `-n` could otherwise cause), and a reply finds its worker by its
/// destination port alone: no shared table, no lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortClass {
    index: u16,
    count: u16,
}

impl PortClass {
    /// The whole port space: one worker.
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// Class `index` of `count` (`index < count`).
    pub fn new(index: u16, count: u16) -> Self {
        assert!(index < count, "port class {index} of {count}");
        Self { index, count }
    }

    /// Which class a port belongs to: the worker that owns replies to it.
    pub fn of(port: u16, count: u16) -> u16 {
        port % count.max(1)
    }

    pub fn contains(&self, port: u16) -> bool {
        Self::of(port, self.count) == self.index
    }

    /// `port` if it is in the class, else the next port of the class.
    pub fn fit(&self, port: u16) -> u16 {
        if self.contains(port) {
            port
        } else {
            self.next(port)
        }
    }

    /// The next port of the class after `port` (stays in 1024..=65535, like [`next_port`]).
    pub fn next(&self, mut port: u16) -> u16 {
        loop {
            port = next_port(port);
            if self.contains(port) {
                return port;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint::v4([10, 0, 0, last], port)
    }

    #[test]
    fn the_flow_hash_is_symmetric_and_spreads() {
        assert_eq!(symmetric_flow_hash(&ep(1, 40000), &ep(2, 80)), symmetric_flow_hash(&ep(2, 80), &ep(1, 40000)));
        assert_ne!(symmetric_flow_hash(&ep(1, 40000), &ep(2, 80)), symmetric_flow_hash(&ep(1, 40001), &ep(2, 80)));
    }

    #[test]
    fn sampling_is_all_or_nothing_per_session_and_near_the_percentage() {
        let online = ep(2, 80);
        let picked = (0..10_000u16).filter(|&p| sampled(30, &ep(1, 20000 + p), &online)).count();
        assert!((2700..3300).contains(&picked), "{picked} of 10000 at 30 %");
        for p in 0..100 {
            let c = ep(1, 30000 + p);
            assert_eq!(sampled(30, &c, &online), sampled(30, &c, &online));
        }
        assert!((0..100).all(|p| sampled(100, &ep(1, p), &online)));
        assert!(!(0..100).any(|p| sampled(0, &ep(1, p), &online)));
    }

    #[test]
    fn client_address_lists_and_ranges() {
        let c: ClientAddrs = "10.1.0.1,10.1.0.9".parse().unwrap();
        assert_eq!(c.len(), 2);
        let r: ClientAddrs = "10.1.0.250-10.1.1.4".parse().unwrap();
        assert_eq!(r.len(), 11);
        assert_eq!(r.0[10], "10.1.1.4".parse::<IpAddr>().unwrap());
        let v6: ClientAddrs = "fd00::1-fd00::3".parse().unwrap();
        assert_eq!(v6.len(), 3);
        assert!(matches!("10.0.0.5-10.0.0.1".parse::<ClientAddrs>(), Err(ClientAddrsError::BadRange(_))));
        assert!(matches!("10.0.0.1-fd00::1".parse::<ClientAddrs>(), Err(ClientAddrsError::BadRange(_))));
        assert!(matches!("host".parse::<ClientAddrs>(), Err(ClientAddrsError::NotAnAddress(_))));
        assert_eq!("".parse::<ClientAddrs>(), Err(ClientAddrsError::Empty));
        // tcpcopy's form: a /24's hosts.
        let x: ClientAddrs = "62.135.200.x,10.9.0.1".parse().unwrap();
        assert_eq!(x.len(), 255);
        assert_eq!((x.0[0], x.0[253]), ("62.135.200.1".parse().unwrap(), "62.135.200.254".parse().unwrap()));
        assert!(matches!("62.135.x".parse::<ClientAddrs>(), Err(ClientAddrsError::NotAnAddress(_))));
    }

    #[test]
    fn client_addresses_are_declared_as_few_ranges() {
        let v4 = |a: [u8; 4]| Endpoint::v4(a, 0).addr;
        let x: ClientAddrs = "10.9.0.1,62.135.200.x,10.9.0.2,10.9.0.7".parse().unwrap();
        assert_eq!(
            x.ranges(),
            vec![
                (v4([10, 9, 0, 1]), v4([10, 9, 0, 2])),
                (v4([10, 9, 0, 7]), v4([10, 9, 0, 7])),
                (v4([62, 135, 200, 1]), v4([62, 135, 200, 254]))
            ]
        );
        let v6: ClientAddrs = "fd00::3,fd00::1-fd00::2".parse().unwrap();
        assert_eq!(v6.ranges().len(), 1);
    }

    #[test]
    fn a_client_always_maps_to_the_same_address() {
        let c: ClientAddrs = "10.1.0.1-10.1.0.100".parse().unwrap();
        let client = ep(7, 0).addr;
        assert_eq!(c.for_client(&client, 0), c.for_client(&client, 0));
        let spread: std::collections::HashSet<_> = (0..50).map(|i| c.for_client(&ep(i, 0).addr, 0)).collect();
        assert!(spread.len() > 25, "50 clients over 100 addresses use {} of them", spread.len());
    }

    #[test]
    fn each_copy_shifts_ports_bijectively_and_away_from_the_original() {
        for copy in 1..5u16 {
            let mut seen = vec![false; 65536];
            for port in 1024..=65535u16 {
                let p = shifted_port(port, copy, 1000);
                assert!(p >= 1024);
                assert!(!seen[p as usize], "copy {copy}: port {p} taken twice");
                seen[p as usize] = true;
            }
        }
        assert_eq!(shifted_port(40000, 0, 1000), 40000);
        assert_ne!(shifted_port(40000, 1, 1000), 40000);
        // The original tool's wrap put low ports of every copy on one port; ours spreads them.
        let low: std::collections::HashSet<_> = (1..1024u16).map(|p| shifted_port(p, 1, 1)).collect();
        assert_eq!(low.len(), 1023);
    }

    #[test]
    fn port_classes_partition_the_ports_among_workers() {
        let classes: Vec<_> = (0..3).map(|i| PortClass::new(i, 3)).collect();
        for port in [1024u16, 40000, 40001, 40002, 65535, 65534, 80] {
            let owners: Vec<_> = classes.iter().filter(|c| c.contains(port)).collect();
            assert_eq!(owners.len(), 1, "port {port}");
            for c in &classes {
                let p = c.fit(port);
                assert!(c.contains(p), "{c:?} fit {port} -> {p}");
                assert_eq!(PortClass::of(p, 3), c.index, "a reply to {p} finds its worker");
                let n = c.next(p);
                assert!(c.contains(n) && n != p && n >= 1024);
            }
        }
        // The owner keeps the client's port; the others move it by less than a class width.
        assert_eq!(classes[PortClass::of(40000, 3) as usize].fit(40000), 40000);
        assert!(classes.iter().all(|c| c.fit(40000) - 40000 < 3));
        assert_eq!(PortClass::ALL.fit(80), 80);
        assert_eq!(PortClass::ALL.next(65535), 1024);
    }
}
