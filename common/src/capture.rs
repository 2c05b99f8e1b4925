//! What the copier's XDP program copies to userspace in copy mode.

/// Frame bytes one record holds: a full 1500-byte-MTU frame with two VLAN tags, rounded so the
/// record is 2 KiB.
pub const CAPTURE_BYTES: usize = 2048 - 8;

/// One copied frame in the capture ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureRecord {
    /// Bytes of `data` that are valid.
    pub len: u16,
    /// The frame's real length (larger than `len` when it was truncated).
    pub frame_len: u16,
    pub _pad: u32,
    pub data: [u8; CAPTURE_BYTES],
}

/// Header bytes before `data`.
pub const RECORD_HEADER: usize = 8;

impl CaptureRecord {
    /// Reads a record from ring buffer bytes: the copied frame, or `None` if malformed.
    pub fn frame(bytes: &[u8]) -> Option<&[u8]> {
        let len = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
        bytes.get(RECORD_HEADER..RECORD_HEADER + len.min(CAPTURE_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_two_kib_and_their_frames_bounded() {
        assert_eq!(core::mem::size_of::<CaptureRecord>(), 2048);
        let mut bytes = vec![0u8; 2048];
        bytes[0..2].copy_from_slice(&60u16.to_ne_bytes());
        assert_eq!(CaptureRecord::frame(&bytes).unwrap().len(), 60);
        bytes[0..2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(CaptureRecord::frame(&bytes).unwrap().len(), CAPTURE_BYTES, "a corrupt length is bounded");
        assert_eq!(CaptureRecord::frame(&bytes[..1]), None);
    }
}
