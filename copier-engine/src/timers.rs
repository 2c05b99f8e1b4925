//! The engine's timers: a hierarchical timing wheel (as the Linux kernel's and tokio's), so that
//! scheduling and firing cost the same however many sessions wait.
//!
//! A binary heap paid a logarithm of cache misses per entry, and entries pile up: every session
//! leaves one for its idle timeout (two minutes) behind when it closes (docs/bench.md, "Design
//! choices").
//!
//! The engine puts deadlines off a little ([`coarsen`]) so that timers due about together fire
//! in one wake-up. The wheel keeps them exact, in microseconds; only their placement is coarse.
//! Level `L` has 64 slots of 64^L ticks of 1024 µs, and nine levels hold every `u64` of
//! microseconds, so nothing is ever clamped. An entry sits at the level of the highest tick digit in which its deadline
//! differs from the wheel's current tick, so the occupied slot of the lowest occupied level is
//! always the next to come due; when it does, its entries move down (cascade) or fire.

/// Microseconds per tick, as a shift.
const TICK_SHIFT: u32 = 10;
/// Slots per level, as a shift.
const LEVEL_BITS: u32 = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
/// Enough levels for every tick of a `u64` of microseconds (54 bits, 9 digits of 6).
const LEVELS: usize = (64 - TICK_SHIFT).div_ceil(LEVEL_BITS) as usize;

/// The most a deadline is put off by [`coarsen`], microseconds (about 65 ms).
pub const MAX_SLACK_US: u64 = 1 << 16;

/// `at`, put off to a multiple of the largest power of two microseconds that is at most an
/// eighth of how far it is from `now` (and at most [`MAX_SLACK_US`]). Timers due about
/// together then fire in one wake-up: at recorded pace sessions end a millisecond apart, and
/// their lingers, retransmission and idle timers each woke the worker alone. None of the
/// engine's timers needs to be exact; Linux's timer wheel allows the same 12.5 %.
pub fn coarsen(now: u64, at: u64) -> u64 {
    let slack = (at.saturating_sub(now) / 8).min(MAX_SLACK_US);
    if slack < 2 {
        return at;
    }
    let granule = 1u64 << (63 - slack.leading_zeros());
    at.checked_next_multiple_of(granule).unwrap_or(at)
}

pub struct Wheel<T> {
    /// `LEVELS * SLOTS` slots, level by level; entries keep their exact deadline.
    slots: Box<[Vec<(u64, T)>]>,
    /// Per level, a bit per non-empty slot.
    occupied: [u64; LEVELS],
    /// The current tick: every slot that started before it has been taken.
    elapsed: u64,
    len: usize,
}

impl<T: Copy> Default for Wheel<T> {
    fn default() -> Self {
        Self { slots: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(), occupied: [0; LEVELS], elapsed: 0, len: 0 }
    }
}

impl<T: Copy> Wheel<T> {
    /// Entries waiting, due or not.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds `item`, due at `at` µs. A deadline already past comes due at the next [`Self::take_due`].
    pub fn insert(&mut self, at: u64, item: T) {
        self.place(at, item);
        self.len += 1;
    }

    /// When [`Self::take_due`] has something to do next: the exact earliest deadline when the
    /// next entries are in the current 64 ticks, otherwise the start of the slot they wait in
    /// (earlier than any of them; taking it moves them closer).
    pub fn next_deadline(&self) -> Option<u64> {
        let (level, slot, start) = self.next_slot()?;
        match level {
            0 => self.slots[slot].iter().map(|&(at, _)| at).min(),
            _ => Some(start << TICK_SHIFT),
        }
    }

    /// Moves every entry due at `now` µs into `due`, earliest slot first.
    pub fn take_due(&mut self, now: u64, due: &mut Vec<(u64, T)>) {
        let now_tick = now >> TICK_SHIFT;
        while let Some((level, slot, start)) = self.next_slot().filter(|&(_, _, start)| start <= now_tick) {
            self.elapsed = start;
            let mut entries = std::mem::take(&mut self.slots[level * SLOTS + slot]);
            self.occupied[level] &= !(1 << slot);
            if level == 0 {
                let before = due.len();
                due.extend(entries.iter().filter(|&&(at, _)| at <= now));
                self.len -= due.len() - before;
                entries.retain(|&(at, _)| at > now);
                let current = start == now_tick;
                if !entries.is_empty() {
                    self.occupied[0] |= 1 << slot;
                }
                self.slots[slot] = entries;
                if current {
                    break; // the rest of this tick is not due yet; every later slot starts later
                }
            } else {
                for (at, item) in entries.drain(..) {
                    self.place(at, item);
                }
                // Keep the slot's allocation for the entries that come later.
                self.slots[level * SLOTS + slot] = entries;
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
    }

    fn place(&mut self, at: u64, item: T) {
        let when = (at >> TICK_SHIFT).max(self.elapsed);
        // The highest digit in which `when` differs from now picks the level (at least 0).
        let differs = (self.elapsed ^ when) | (SLOTS as u64 - 1);
        let level = ((63 - differs.leading_zeros()) / LEVEL_BITS) as usize;
        let slot = ((when >> (level as u32 * LEVEL_BITS)) & (SLOTS as u64 - 1)) as usize;
        self.slots[level * SLOTS + slot].push((at, item));
        self.occupied[level] |= 1 << slot;
    }

    /// The next slot to come due: the first occupied slot of the lowest occupied level, and its
    /// start tick. Every entry of a level shares all higher digits with `elapsed` and is at or
    /// past its digit at that level, so no slot of a level comes before `elapsed`'s.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let slot = self.occupied[level].trailing_zeros() as usize;
        let shift = level as u32 * LEVEL_BITS;
        let level_start = self.elapsed >> (shift + LEVEL_BITS) << (shift + LEVEL_BITS);
        let start = level_start + ((slot as u64) << shift);
        debug_assert!(start >> shift >= self.elapsed >> shift, "slot {slot} of level {level} is behind the wheel");
        Some((level, slot, start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the wheel as the engine does: to each next deadline, collecting what fires when.
    fn run_until(w: &mut Wheel<u32>, limit: u64) -> Vec<(u64, u32)> {
        let (mut fired, mut due) = (Vec::new(), Vec::new());
        while let Some(at) = w.next_deadline().filter(|&at| at <= limit) {
            w.take_due(at, &mut due);
            fired.extend(due.drain(..).map(|(deadline, item)| {
                assert!(deadline <= at, "{item} fired at {at}, before its deadline {deadline}");
                (at, item)
            }));
        }
        fired
    }

    #[test]
    fn a_coarse_deadline_is_late_by_an_eighth_at_most_and_shared_by_its_neighbours() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let now = rng % (1 << 40);
            let at = now + rng % (1 << (rng % 40));
            let late = coarsen(now, at) - at;
            assert!(late <= (at - now) / 8 && late < MAX_SLACK_US, "{at} from {now} put off by {late}");
        }
        assert_eq!(coarsen(1_000, 1_010), 1_010, "a deadline close by is kept");
        assert_eq!(coarsen(5, 5), 5);
        assert_eq!(coarsen(10, 3), 3, "a deadline already past is kept");
        // Lingers of sessions that closed a millisecond apart, a second each: one wake-up.
        let lingers: std::collections::BTreeSet<u64> =
            (0..60).map(|ms| coarsen(7_000_000 + ms * 1_000, 8_000_000 + ms * 1_000)).collect();
        assert!(lingers.len() <= 2, "{lingers:?}");
        assert_eq!(coarsen(0, u64::MAX), u64::MAX, "no overflow");
    }

    #[test]
    fn entries_fire_at_their_exact_deadlines_in_order_however_far_apart() {
        let mut w = Wheel::default();
        let deadlines = [5, 1_023, 1_024, 70_000, 1_000_000, 120_000_000, 3_600_000_000, u64::MAX / 3];
        for (i, &at) in deadlines.iter().enumerate().rev() {
            w.insert(at, i as u32);
        }
        assert_eq!(w.len(), deadlines.len());
        let fired = run_until(&mut w, u64::MAX);
        let expected: Vec<(u64, u32)> = deadlines.iter().enumerate().map(|(i, &at)| (at, i as u32)).collect();
        assert_eq!(fired, expected);
        assert_eq!((w.len(), w.next_deadline()), (0, None));
    }

    #[test]
    fn nothing_fires_before_its_deadline_even_within_the_current_tick() {
        let mut w = Wheel::default();
        w.insert(2_100, 1);
        w.insert(2_500, 2);
        let mut due = Vec::new();
        w.take_due(2_099, &mut due);
        assert!(due.is_empty());
        w.take_due(2_100, &mut due);
        assert_eq!(due, [(2_100, 1)]);
        assert_eq!(w.next_deadline(), Some(2_500));
        w.take_due(3_000, &mut due);
        assert_eq!(due, [(2_100, 1), (2_500, 2)]);
    }

    #[test]
    fn a_deadline_already_past_fires_at_the_next_look() {
        let mut w = Wheel::default();
        let mut due = Vec::new();
        w.take_due(10_000_000, &mut due);
        w.insert(5, 7);
        assert_eq!(w.next_deadline(), Some(5));
        w.take_due(10_000_000, &mut due);
        assert_eq!(due, [(5, 7)]);
    }

    #[test]
    fn entries_added_while_the_wheel_turns_keep_their_deadlines() {
        // As the engine: each firing schedules the next, with deadlines from 1 µs to minutes.
        let mut w = Wheel::default();
        let (mut now, mut due, mut fired) = (0u64, Vec::new(), 0);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut step = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut expected = std::collections::BTreeSet::new();
        for id in 0..1_000u32 {
            let at = 1 + step() % 200_000_000;
            w.insert(at, id);
            expected.insert((at, id));
        }
        while let Some(at) = w.next_deadline() {
            assert!(at >= now, "the next deadline {at} is behind {now}");
            // Sometimes late, as a worker that slept longer.
            now = at + if step() % 3 == 0 { step() % 5_000 } else { 0 };
            w.take_due(now, &mut due);
            let mut fired_now = std::mem::take(&mut due);
            fired_now.sort_unstable();
            let mut due_now: Vec<(u64, u32)> = expected.iter().copied().take_while(|&(at, _)| at <= now).collect();
            assert_eq!(fired_now, due_now, "at {now}: exactly what is due fires");
            for (_, id) in due_now.drain(..) {
                expected.retain(|&(_, i)| i != id);
                fired += 1;
                if fired < 3_000 {
                    let at = now + 1 + step() % (1 << (step() % 28));
                    w.insert(at, id);
                    expected.insert((at, id));
                }
            }
        }
        assert!(expected.is_empty() && w.len() == 0, "{} never fired", expected.len());
        assert_eq!(fired, 3_000 + 999);
    }
}
