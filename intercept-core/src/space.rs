//! The client addresses a copier declared (SPACE): its announcements must stay inside them, so a
//! copier cannot claim replies for addresses it never replays from.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use common::endpoint::Endpoint;

/// Sorted, merged ranges of 16-byte addresses (IPv4 mapped), both ends included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpace(Vec<(u128, u128)>);

impl ClientSpace {
    pub fn new(ranges: impl IntoIterator<Item = ([u8; 16], [u8; 16])>) -> Self {
        let mut r: Vec<(u128, u128)> =
            ranges.into_iter().map(|(a, b)| (u128::from_be_bytes(a), u128::from_be_bytes(b))).collect();
        r.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(r.len());
        for (first, last) in r {
            match merged.last_mut() {
                Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        Self(merged)
    }

    pub fn contains(&self, e: &Endpoint) -> bool {
        let a = u128::from_be_bytes(e.addr);
        let i = self.0.partition_point(|&(first, _)| first <= a);
        i > 0 && a <= self.0[i - 1].1
    }
}

impl fmt::Display for ClientSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = |a: u128| -> IpAddr { SocketAddr::from(Endpoint::v6(a.to_be_bytes(), 0)).ip() };
        for (i, &(first, last)) in self.0.iter().enumerate().take(4) {
            let sep = if i == 0 { "" } else { "," };
            if first == last {
                write!(f, "{sep}{}", addr(first))?;
            } else {
                write!(f, "{sep}{}-{}", addr(first), addr(last))?;
            }
        }
        if self.0.len() > 4 {
            write!(f, ",… ({} ranges)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        Endpoint::v4(a, 0).addr
    }

    #[test]
    fn addresses_inside_any_range_are_in_the_space() {
        let space =
            ClientSpace::new([(v4([10, 9, 0, 1]), v4([10, 9, 0, 254])), (v4([10, 8, 0, 5]), v4([10, 8, 0, 5]))]);
        for (a, inside) in
            [([10, 9, 0, 1], true), ([10, 9, 0, 254], true), ([10, 9, 0, 0], false), ([10, 9, 0, 255], false)]
                .into_iter()
                .chain([([10, 8, 0, 5], true), ([10, 8, 0, 4], false), ([1, 2, 3, 4], false)])
        {
            assert_eq!(space.contains(&Endpoint::v4(a, 40000)), inside, "{a:?}");
        }
        assert_eq!(space.to_string(), "10.8.0.5,10.9.0.1-10.9.0.254");
    }

    #[test]
    fn adjacent_and_overlapping_ranges_merge() {
        let space = ClientSpace::new([
            (v4([10, 0, 0, 5]), v4([10, 0, 0, 9])),
            (v4([10, 0, 0, 1]), v4([10, 0, 0, 4])),
            (v4([10, 0, 0, 7]), v4([10, 0, 0, 12])),
        ]);
        assert_eq!(space.0.len(), 1);
        assert_eq!(space.to_string(), "10.0.0.1-10.0.0.12");
    }
}
