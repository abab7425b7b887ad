//! Which of a publisher's per-track counters a subscriber has already received.
//!
//! The counters come from the payload stamps (`payload.rs`): 32 bits, counting up by one per
//! packet and wrapping. A subscriber tells a new packet from a duplicate by them, across
//! reordering and across a wrap, over the last [`WINDOW`] counters behind the highest seen.
//!
//! Each counter is first placed on a 64-bit line next to the highest one seen (the nearest
//! of the 2^32 candidates), then looked up in a ring of [`WINDOW`] bits indexed by its place.

/// How far behind the highest counter seen a packet is still told new from duplicate.
pub const WINDOW: u64 = 1024;

const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (WINDOW / WORD_BITS) as usize;

/// Where the first counter seen is placed: one wrap up from zero, so that counters from
/// before it (reordered ahead of it) still have a place below.
const START: u64 = 1 << 32;

/// What [`SeenCounters::insert`] made of one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not received before.
    New,
    /// Received before.
    Duplicate,
    /// Further behind the highest than the window reaches: cannot tell.
    OutOfWindow,
}

/// The counters seen lately, in a ring of bits: bit `place % WINDOW` stands for `place`
/// while `place` is within the window behind the highest.
#[derive(Debug, Clone)]
pub struct SeenCounters {
    ring: [u64; WORDS],
    /// The highest place seen; `None` before the first counter.
    top: Option<u64>,
}

impl Default for SeenCounters {
    fn default() -> Self {
        SeenCounters {
            ring: [0; WORDS],
            top: None,
        }
    }
}

impl SeenCounters {
    /// Where `counter` sits on the 64-bit line: next to the highest counter seen (where
    /// [`insert`](Self::insert) would put it). Places grow by one per counter across wraps, so
    /// spans and gaps between them are plain subtractions.
    pub fn place_of(&self, counter: u32) -> u64 {
        match self.top {
            None => START + u64::from(counter),
            Some(top) => place_near(top, counter),
        }
    }

    /// Records one counter and says whether it was new.
    pub fn insert(&mut self, counter: u32) -> Seen {
        let Some(top) = self.top else {
            self.top = Some(START + u64::from(counter));
            self.set(START + u64::from(counter));
            return Seen::New;
        };
        let place = place_near(top, counter);
        if place > top {
            self.clear_between(top, place);
            self.top = Some(place);
            self.set(place);
            return Seen::New;
        }
        if top - place >= WINDOW {
            return Seen::OutOfWindow;
        }
        if self.is_set(place) {
            Seen::Duplicate
        } else {
            self.set(place);
            Seen::New
        }
    }

    /// Forgets the ring's bits for every place after `from` up to `to` (included): they stood
    /// for places a whole window older.
    fn clear_between(&mut self, from: u64, to: u64) {
        if to - from >= WINDOW {
            self.ring = [0; WORDS];
            return;
        }
        for place in from + 1..=to {
            let (word, bit) = slot(place);
            self.ring[word] &= !bit;
        }
    }

    fn set(&mut self, place: u64) {
        let (word, bit) = slot(place);
        self.ring[word] |= bit;
    }

    fn is_set(&self, place: u64) -> bool {
        let (word, bit) = slot(place);
        self.ring[word] & bit != 0
    }
}

/// The word and bit of the ring that stand for `place`.
fn slot(place: u64) -> (usize, u64) {
    let at = place % WINDOW;
    ((at / WORD_BITS) as usize, 1 << (at % WORD_BITS))
}

/// The place of `counter` nearest to `top`: up to 2^31 ahead of it, or up to 2^31 behind.
fn place_near(top: u64, counter: u32) -> u64 {
    let low = top as u32;
    let ahead = counter.wrapping_sub(low);
    if ahead < 1 << 31 {
        top + u64::from(ahead)
    } else {
        let behind = low.wrapping_sub(counter);
        top.saturating_sub(u64::from(behind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_counters_are_new_and_repeats_are_duplicates() {
        let mut seen = SeenCounters::default();
        for c in 0..5000u32 {
            assert_eq!(seen.insert(c), Seen::New, "{c}");
        }
        for c in 5000 - WINDOW as u32..5000 {
            assert_eq!(seen.insert(c), Seen::Duplicate, "{c}");
        }
    }

    #[test]
    fn reordered_counters_are_new_once() {
        let mut seen = SeenCounters::default();
        let order = [10u32, 12, 11, 15, 13, 14, 9, 8, 16];
        for c in order {
            assert_eq!(seen.insert(c), Seen::New, "{c}");
        }
        for c in order {
            assert_eq!(seen.insert(c), Seen::Duplicate, "{c}");
        }
        // A counter before the very first one seen has a place too.
        assert_eq!(seen.insert(0), Seen::New);
        assert_eq!(seen.insert(0), Seen::Duplicate);
    }

    #[test]
    fn the_window_edge() {
        let mut seen = SeenCounters::default();
        let top = 10_000u32;
        assert_eq!(seen.insert(top), Seen::New);
        let last_inside = top - (WINDOW as u32 - 1);
        let first_outside = top - WINDOW as u32;
        assert_eq!(seen.insert(last_inside), Seen::New);
        assert_eq!(seen.insert(last_inside), Seen::Duplicate);
        assert_eq!(seen.insert(first_outside), Seen::OutOfWindow);
        assert_eq!(seen.insert(first_outside), Seen::OutOfWindow);
        // One step further and the oldest place leaves the window: its bit must not be taken
        // for the new top's.
        assert_eq!(seen.insert(top + 1), Seen::New);
        assert_eq!(seen.insert(last_inside), Seen::OutOfWindow);
        assert_eq!(seen.insert(top + 1), Seen::Duplicate);
    }

    #[test]
    fn a_far_jump_forgets_everything_behind_it() {
        let mut seen = SeenCounters::default();
        for c in 0..100u32 {
            seen.insert(c);
        }
        // Exactly a window ahead: every bit of the ring now means a new place.
        let jump = 99 + WINDOW as u32;
        assert_eq!(seen.insert(jump), Seen::New);
        for c in jump - (WINDOW as u32 - 1)..jump {
            assert_eq!(seen.insert(c), Seen::New, "{c}");
        }
        assert_eq!(seen.insert(50), Seen::OutOfWindow);
        // Far further: a million ahead.
        assert_eq!(seen.insert(jump + 1_000_000), Seen::New);
        assert_eq!(seen.insert(jump + 1_000_000 - 1), Seen::New);
        assert_eq!(seen.insert(jump), Seen::OutOfWindow);
    }

    #[test]
    fn jumps_of_every_size_keep_what_is_still_in_the_window() {
        for step in [1u32, 2, 63, 64, 65, 511, 512, 1023, 1024, 1025, 5000] {
            let mut seen = SeenCounters::default();
            let sent: Vec<u32> = (0..50).map(|i| 7 + i * step).collect();
            for &c in &sent {
                assert_eq!(seen.insert(c), Seen::New, "step {step}, {c}");
            }
            let top = *sent.last().unwrap();
            for &c in &sent {
                let want = if u64::from(top - c) >= WINDOW {
                    Seen::OutOfWindow
                } else {
                    Seen::Duplicate
                };
                assert_eq!(seen.insert(c), want, "step {step}, {c}");
            }
        }
    }

    #[test]
    fn counters_wrap_around_u32() {
        let mut seen = SeenCounters::default();
        let start = u32::MAX - 300;
        let mut c = start;
        for _ in 0..600 {
            assert_eq!(seen.insert(c), Seen::New, "{c}");
            c = c.wrapping_add(1);
        }
        // Both sides of the wrap are remembered as what they are.
        assert_eq!(seen.insert(u32::MAX), Seen::Duplicate);
        assert_eq!(seen.insert(0), Seen::Duplicate);
        assert_eq!(seen.insert(start), Seen::Duplicate);
        // A late packet from before the wrap, arriving after it, is old, not 4 billion ahead.
        let mut late = SeenCounters::default();
        assert_eq!(late.insert(u32::MAX - 1), Seen::New);
        assert_eq!(late.insert(3), Seen::New);
        assert_eq!(late.insert(u32::MAX), Seen::New);
        assert_eq!(late.insert(u32::MAX), Seen::Duplicate);
        assert_eq!(late.insert(2), Seen::New);
        assert_eq!(late.insert(3), Seen::Duplicate);
    }

    #[test]
    fn places_count_on_across_the_wrap() {
        let mut seen = SeenCounters::default();
        let first = seen.place_of(u32::MAX - 1);
        seen.insert(u32::MAX - 1);
        assert_eq!(seen.place_of(u32::MAX), first + 1);
        seen.insert(u32::MAX);
        assert_eq!(seen.place_of(0), first + 2);
        assert_eq!(seen.place_of(9), first + 11);
        seen.insert(9);
        assert_eq!(
            seen.place_of(u32::MAX - 1),
            first,
            "behind the top, not 4 billion ahead"
        );
    }
}
