//! TCP sequence numbers: 32-bit, compared and advanced with wrapping arithmetic (RFC 793 §3.3).

use core::{fmt, ops};

/// A TCP sequence or acknowledgement number.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// Signed distance from `earlier` to `self`, correct across wrap-around for distances
    /// below 2^31.
    #[inline]
    pub const fn since(self, earlier: SeqNum) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }

    #[inline]
    pub fn is_before(self, other: SeqNum) -> bool {
        self.since(other) < 0
    }

    #[inline]
    pub fn is_after(self, other: SeqNum) -> bool {
        self.since(other) > 0
    }
}

impl ops::Add<u32> for SeqNum {
    type Output = SeqNum;
    #[inline]
    fn add(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(n))
    }
}

impl ops::AddAssign<u32> for SeqNum {
    #[inline]
    fn add_assign(&mut self, n: u32) {
        self.0 = self.0.wrapping_add(n);
    }
}

impl ops::Sub<u32> for SeqNum {
    type Output = SeqNum;
    #[inline]
    fn sub(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(n))
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_survives_wrap_around() {
        let near_end = SeqNum(u32::MAX - 10);
        let wrapped = near_end + 20;
        assert_eq!(wrapped, SeqNum(9));
        assert!(wrapped.is_after(near_end));
        assert!(near_end.is_before(wrapped));
        assert_eq!(wrapped.since(near_end), 20);
        assert_eq!(near_end.since(wrapped), -20);
        assert_eq!(wrapped - 20, near_end);
    }
}
