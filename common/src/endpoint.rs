//! TCP endpoints as map keys, the same for IPv4 and IPv6.

use core::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

/// An address and TCP port, as a fixed-size map key.
///
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one map serves both families.
/// The all-zero address is the wildcard ("any address on this port"). No implicit padding:
/// hash-map keys are compared bytewise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl Endpoint {
    #[inline(always)]
    pub const fn v4(addr: [u8; 4], port: u16) -> Self {
        let p = V4_MAPPED_PREFIX;
        Self {
            addr: [
                p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], addr[0], addr[1], addr[2],
                addr[3],
            ],
            port,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self { addr, port, _pad: [0; 2] }
    }

    /// The IPv4 address, if this is one (stored IPv4-mapped).
    #[inline(always)]
    pub fn ipv4(&self) -> Option<[u8; 4]> {
        let [p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, a, b, c, d] = self.addr;
        ([p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11] == V4_MAPPED_PREFIX).then_some([a, b, c, d])
    }

    /// The key that matches every address on `port`.
    #[inline(always)]
    pub const fn any(port: u16) -> Self {
        Self { addr: [0; 16], port, _pad: [0; 2] }
    }
}

// SAFETY: `Endpoint` is `repr(C)`, `Copy`, has no padding and every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}

impl From<Endpoint> for SocketAddr {
    fn from(e: Endpoint) -> Self {
        let v6 = Ipv6Addr::from(e.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), e.port),
            None => SocketAddr::new(IpAddr::V6(v6), e.port),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(sa: SocketAddr) -> Self {
        match sa.ip() {
            IpAddr::V4(ip) => Self::v4(ip.octets(), sa.port()),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => Self::v4(v4.octets(), sa.port()),
                None => Self::v6(ip.octets(), sa.port()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_its_mapped_ipv6_form_are_the_same_key() {
        let v4: Endpoint = "10.0.0.1:80".parse::<SocketAddr>().unwrap().into();
        let v6: Endpoint = "[::ffff:10.0.0.1]:80".parse::<SocketAddr>().unwrap().into();
        assert_eq!(v4, v6);
        assert_eq!(v4, Endpoint::v4([10, 0, 0, 1], 80));
    }

    #[test]
    fn key_has_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 20);
    }
}
