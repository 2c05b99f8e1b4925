//! What the copier's XDP program copies to userspace in copy mode.

/// Frame bytes one record holds: a full 1500-byte-MTU frame with two VLAN tags, rounded so the
/// record is 2 KiB.
pub const CAPTURE_BYTES: usize = 2048 - 8;

/// Frame bytes a jumbo record holds: a full 9000-byte-MTU frame (AWS's 9001 included) with
/// two VLAN tags, and 9216, the largest frame common switches forward. Larger frames are cut
/// to it (`truncated`).
pub const JUMBO_CAPTURE_BYTES: usize = 9216;

/// Frame bytes a small record holds: any frame without payload (ACKs, SYNs, FINs, resets) and
/// short requests. Most of what a copier sees is that small; a 256-byte record instead of a
/// 2 KiB one lets the same ring absorb eight times as many of them while userspace is away.
pub const SMALL_CAPTURE_BYTES: usize = 256 - 8;

/// One copied frame in the capture ring, in a record of `N` frame bytes (the ring holds all
/// three sizes; the header says how many bytes are valid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureRecordOf<const N: usize> {
    /// Bytes of `data` that are valid.
    pub len: u16,
    /// The frame's real length (larger than `len` when it was truncated).
    pub frame_len: u16,
    /// When the program saw the frame: CLOCK_MONOTONIC in microseconds, cut to 32 bits (it
    /// wraps every 71 minutes; the reader extends it by its own clock, which is never that far
    /// ahead).
    pub at_us: u32,
    pub data: [u8; N],
}

/// A record for a frame of a 1500-byte MTU.
pub type CaptureRecord = CaptureRecordOf<CAPTURE_BYTES>;
/// A record for any frame (truncated past [`JUMBO_CAPTURE_BYTES`]).
pub type JumboCaptureRecord = CaptureRecordOf<JUMBO_CAPTURE_BYTES>;
/// A record for frames of at most [`SMALL_CAPTURE_BYTES`].
pub type SmallCaptureRecord = CaptureRecordOf<SMALL_CAPTURE_BYTES>;

/// Header bytes before `data`.
pub const RECORD_HEADER: usize = 8;

impl CaptureRecord {
    /// Reads a record of any size from ring buffer bytes: the copied frame and its
    /// [`CaptureRecordOf::at_us`], or `None` if malformed (a length past the record's end).
    pub fn frame(bytes: &[u8]) -> Option<(u32, &[u8])> {
        let len = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
        let at = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
        Some((at, bytes.get(RECORD_HEADER..RECORD_HEADER + len.min(JUMBO_CAPTURE_BYTES))?))
    }
}

/// A record's 32-bit microsecond stamp as the full CLOCK_MONOTONIC microseconds, given the
/// clock `now_us` read after the record was written (so at most one wrap later).
pub fn extend_stamp(at: u32, now_us: u64) -> u64 {
    let back = (now_us as u32).wrapping_sub(at);
    now_us.saturating_sub(u64::from(back))
}

/// The kernel's header before every ring buffer record (`BPF_RINGBUF_HDR_SZ`).
pub const RING_RECORD_HEADER: u64 = 8;

/// Whether the record just reserved should wake the ring's reader: only when it is the only
/// data in the ring (`avail`, `BPF_RB_AVAIL_DATA` read after the reserve, counts it), so an
/// idle reader sleeps in poll(2) instead of looking every millisecond, and under load — the
/// reader away, taking what piled up — no record wakes anyone. Two CPUs filling an empty ring
/// at once may both see the other's record and neither wake: the reader's poll timeout bounds
/// that rare delay.
pub fn wakes_reader(avail: u64, record_size: usize) -> bool {
    avail <= (record_size as u64 + RING_RECORD_HEADER).next_multiple_of(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_record_that_makes_the_ring_non_empty_wakes_the_reader() {
        let small = size_of::<SmallCaptureRecord>();
        assert!(wakes_reader(small as u64 + 8, small), "alone in the ring");
        assert!(!wakes_reader(2 * (small as u64 + 8), small), "another record was waiting: the reader knows");
        let big = size_of::<CaptureRecord>();
        assert!(wakes_reader(big as u64 + 8, big));
        assert!(!wakes_reader(big as u64 + 8 + small as u64 + 8, big));
    }

    #[test]
    fn records_are_two_kib_and_their_frames_bounded() {
        assert_eq!(size_of::<CaptureRecord>(), 2048);
        let mut bytes = vec![0u8; 2048];
        bytes[0..2].copy_from_slice(&60u16.to_ne_bytes());
        bytes[4..8].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(CaptureRecord::frame(&bytes).map(|(at, f)| (at, f.len())), Some((77, 60)));
        bytes[0..2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(CaptureRecord::frame(&bytes), None, "a corrupt length past the record is malformed");
        assert_eq!(CaptureRecord::frame(&bytes[..1]), None);
    }

    #[test]
    fn jumbo_records_hold_a_9000_mtu_frame_with_two_vlan_tags_and_read_alike() {
        assert_eq!(size_of::<JumboCaptureRecord>(), 9224);
        const { assert!(JUMBO_CAPTURE_BYTES >= 9001 + 14 + 8, "AWS's MTU, Ethernet and two VLAN tags") };
        let mut bytes = vec![0u8; size_of::<JumboCaptureRecord>()];
        bytes[0..2].copy_from_slice(&9014u16.to_ne_bytes());
        bytes[8 + 9013] = 0xbb;
        let (_, frame) = CaptureRecord::frame(&bytes).unwrap();
        assert_eq!((frame.len(), frame[9013]), (9014, 0xbb));
        bytes[0..2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(CaptureRecord::frame(&bytes).unwrap().1.len(), JUMBO_CAPTURE_BYTES, "a corrupt length is bounded");
    }

    #[test]
    fn small_records_are_256_bytes_and_read_alike() {
        assert_eq!(size_of::<SmallCaptureRecord>(), 256);
        let mut bytes = vec![0u8; 256];
        bytes[0..2].copy_from_slice(&54u16.to_ne_bytes());
        bytes[8] = 0xaa;
        assert_eq!(CaptureRecord::frame(&bytes).unwrap().1, &bytes[8..62]);
        bytes[0..2].copy_from_slice(&300u16.to_ne_bytes());
        assert_eq!(CaptureRecord::frame(&bytes), None, "a length past the record is malformed");
    }

    #[test]
    fn a_stamp_is_extended_by_the_clock_read_after_it_across_a_wrap() {
        assert_eq!(extend_stamp(1_000, 5_000), 1_000);
        let now = (7u64 << 32) + 10; // just past a wrap
        assert_eq!(extend_stamp(u32::MAX - 5, now), (7u64 << 32) - 6);
        assert_eq!(extend_stamp(10, now), now);
    }
}
