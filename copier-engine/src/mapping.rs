//! `-x [ONLINE_IP:]ONLINE_PORT-TARGET_IP:TARGET_PORT[,...]`: which online traffic goes where.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use common::endpoint::Endpoint;

/// The online side of a mapping: a port, on one address or on all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnlineEndpoint {
    pub addr: Option<IpAddr>,
    pub port: u16,
}

impl OnlineEndpoint {
    /// The key the XDP program looks up (all-zero address for "any").
    pub fn key(&self) -> Endpoint {
        match self.addr {
            Some(ip) => SocketAddr::new(ip, self.port).into(),
            None => Endpoint::any(self.port),
        }
    }
}

impl fmt::Display for OnlineEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(ip) => write!(f, "{}", SocketAddr::new(ip, self.port)),
            None => write!(f, "*:{}", self.port),
        }
    }
}

/// One `-x` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub online: OnlineEndpoint,
    pub target: SocketAddr,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("{0:?}: expected [ONLINE_IP:]ONLINE_PORT-TARGET_IP:TARGET_PORT")]
    Shape(String),
    #[error("{0:?}: not a port number from 1 to 65535")]
    Port(String),
    #[error("{0:?}: not IP:PORT (IPv6 as [ADDR]:PORT)")]
    Target(String),
    #[error("{0:?}: not IP:PORT or PORT (IPv6 as [ADDR]:PORT)")]
    Online(String),
    #[error("no mapping given")]
    Empty,
    #[error("online endpoint {0} is mapped twice to {1}")]
    Duplicate(OnlineEndpoint, SocketAddr),
    #[error("online endpoint {0} is mapped to more than {MAX_FAN_OUT} targets")]
    TooManyTargets(OnlineEndpoint),
}

fn port(s: &str) -> Result<u16, MappingError> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(MappingError::Port(s.into())),
    }
}

impl FromStr for Mapping {
    type Err = MappingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // IPv6 addresses contain no '-', so the first one separates the two sides.
        let (online, target) = s.split_once('-').ok_or_else(|| MappingError::Shape(s.into()))?;
        let online = if online.bytes().all(|b| b.is_ascii_digit()) {
            OnlineEndpoint { addr: None, port: port(online)? }
        } else {
            let sa: SocketAddr = online.parse().map_err(|_| MappingError::Online(online.into()))?;
            OnlineEndpoint { addr: Some(sa.ip()), port: port(&sa.port().to_string())? }
        };
        let target: SocketAddr = target.parse().map_err(|_| MappingError::Target(target.into()))?;
        port(&target.port().to_string())?;
        Ok(Self { online, target })
    }
}

/// A whole `-x` argument: one or more mappings, no online endpoint twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mappings(pub Vec<Mapping>);

impl FromStr for Mappings {
    type Err = MappingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_mappings(s).map(Self)
    }
}

/// Parses a comma-separated `-x` list.
/// Targets one online endpoint may be mapped to (fan-out: each gets every session).
pub const MAX_FAN_OUT: usize = 8;

pub fn parse_mappings(s: &str) -> Result<Vec<Mapping>, MappingError> {
    let items = s.split(',').map(str::trim).filter(|i| !i.is_empty()).map(str::parse);
    checked(items.collect::<Result<Vec<Mapping>, _>>()?)
}

impl Mappings {
    /// The mappings of several `-x` arguments, checked as one list.
    pub fn joined(parts: &[Mappings]) -> Result<Self, MappingError> {
        checked(parts.iter().flat_map(|m| m.0.iter().cloned()).collect()).map(Self)
    }
}

/// `items`, if no mapping is there twice and no online endpoint has too many targets.
fn checked(items: Vec<Mapping>) -> Result<Vec<Mapping>, MappingError> {
    let mut out: Vec<Mapping> = Vec::with_capacity(items.len());
    for m in items {
        if out.contains(&m) {
            return Err(MappingError::Duplicate(m.online, m.target));
        }
        if out.iter().filter(|o| o.online == m.online).count() >= MAX_FAN_OUT {
            return Err(MappingError::TooManyTargets(m.online));
        }
        out.push(m);
    }
    if out.is_empty() {
        return Err(MappingError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn repeated_arguments_are_checked_as_one_list() {
        let (a, b): (Mappings, Mappings) = ("80-10.0.2.2:8080".parse().unwrap(), "80-10.0.2.3:8080".parse().unwrap());
        assert_eq!(Mappings::joined(&[a.clone(), b]).unwrap().0.len(), 2);
        assert!(matches!(Mappings::joined(&[a.clone(), a]), Err(MappingError::Duplicate(..))));
        let many: Vec<Mappings> = (1..=9).map(|i| format!("80-10.0.2.{i}:8080").parse().unwrap()).collect();
        assert!(matches!(Mappings::joined(&many), Err(MappingError::TooManyTargets(..))));
        assert!(matches!(Mappings::joined(&[]), Err(MappingError::Empty)));
    }

    #[test]
    fn port_only_online_side_means_any_address() {
        let m: Mapping = "80-10.0.2.2:8080".parse().unwrap();
        assert_eq!(m.online, OnlineEndpoint { addr: None, port: 80 });
        assert_eq!(m.target, sa("10.0.2.2:8080"));
        assert_eq!(m.online.key(), Endpoint::any(80));
    }

    #[test]
    fn addressed_online_sides_ipv4_and_ipv6() {
        let m: Mapping = "10.0.1.1:80-10.0.2.2:8080".parse().unwrap();
        assert_eq!(m.online.key(), Endpoint::v4([10, 0, 1, 1], 80));
        let m: Mapping = "[fd00::1]:443-[fd00::2]:8443".parse().unwrap();
        assert_eq!(m.online.addr, Some("fd00::1".parse().unwrap()));
        assert_eq!(m.target, sa("[fd00::2]:8443"));
    }

    #[test]
    fn lists_are_comma_separated() {
        let ms = parse_mappings("80-10.0.2.2:8080, 6379-10.0.2.2:6379").unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1].online.port, 6379);
    }

    #[test]
    fn bad_mappings_say_what_is_wrong() {
        use MappingError::*;
        assert_eq!(parse_mappings(""), Err(Empty));
        assert_eq!("80".parse::<Mapping>(), Err(Shape("80".into())));
        assert_eq!("0-10.0.0.1:80".parse::<Mapping>(), Err(Port("0".into())));
        assert_eq!("70000-10.0.0.1:80".parse::<Mapping>(), Err(Port("70000".into())));
        assert_eq!("80-10.0.0.1".parse::<Mapping>(), Err(Target("10.0.0.1".into())));
        assert_eq!("80-10.0.0.1:0".parse::<Mapping>(), Err(Port("0".into())));
        assert_eq!("host:80-10.0.0.1:80".parse::<Mapping>(), Err(Online("host:80".into())));
        assert!(matches!(parse_mappings("80-10.0.0.1:80,80-10.0.0.1:80"), Err(Duplicate(..))));
        let nine: Vec<String> = (1..=9).map(|i| format!("80-10.0.0.{i}:80")).collect();
        assert!(matches!(parse_mappings(&nine.join(",")), Err(TooManyTargets(_))));
    }

    #[test]
    fn one_online_port_may_fan_out_to_several_targets() {
        let ms = parse_mappings("80-10.0.0.1:8080,80-10.0.0.2:8080").unwrap();
        assert_eq!((ms[0].online, ms[1].target), (ms[1].online, sa("10.0.0.2:8080")));
    }
}
