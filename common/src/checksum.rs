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

/// RFC 1624 eqn. 3: the checksum after a 16-bit field changed from `old` to `new`
/// (`HC' = ~(~HC + ~m + m')`).
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = (!check) as u32 + (!old) as u32 + new as u32;
    finish(acc)
}

/// The checksum after a 32-bit field (an address, a sequence number) changed.
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let check = update16(check, (old >> 16) as u16, (new >> 16) as u16);
    update16(check, old as u16, new as u16)
}

/// The checksum after a byte string (an IPv6 address) changed; `old` and `new` have the same
/// even length.
pub fn update_bytes(mut check: u16, old: &[u8], new: &[u8]) -> u16 {
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        check = update16(check, u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([n[0], n[1]]));
    }
    check
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

    #[test]
    fn incremental_updates_match_recomputation() {
        let mut data: [u8; 20] = core::array::from_fn(|i| (i * 37 + 11) as u8);
        let check = finish(sum(0, &data));
        // Rewrite a 32-bit field at offset 4 and a 16-bit field at offset 10.
        let old32 = u32::from_be_bytes(data[4..8].try_into().unwrap());
        let old16 = u16::from_be_bytes([data[10], data[11]]);
        data[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        data[10..12].copy_from_slice(&0xffffu16.to_be_bytes());
        let updated = update16(update32(check, old32, 0xdead_beef), old16, 0xffff);
        assert_eq!(updated, finish(sum(0, &data)));
    }
}
