//! Extended (wrap-aware) RTP sequence numbers.
//!
//! A 16-bit sequence number wraps every 65,536 packets: about four minutes of 1.5 Mbit/s
//! video. Every comparison in the data plane is made on extended numbers, placed relative to
//! the highest seen so far (RFC 3550 appendix A.1), never on a difference from a start point.

/// Extends 16-bit sequence numbers to 64 bits.
#[derive(Debug, Clone, Default)]
pub struct SeqUnwrapper {
    highest: Option<u64>,
}

/// The first extended number: one whole cycle up, so that packets reordered before the
/// first one seen still have a place.
const FIRST_CYCLE: u64 = 1 << 16;

impl SeqUnwrapper {
    /// The extended number of `seq`: the one nearest to the highest seen. Moves the highest
    /// forward when `seq` is newer.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let ext = self.peek(seq);
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }

    /// The extended number `seq` would get, without recording it.
    pub fn peek(&self, seq: u16) -> u64 {
        match self.highest {
            None => FIRST_CYCLE + u64::from(seq),
            Some(highest) => {
                // Within half the space either way of the highest: later or earlier.
                let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
                highest.saturating_add_signed(delta)
            }
        }
    }

    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    pub fn reset(&mut self) {
        self.highest = None;
    }
}

/// Which of the last `WINDOW` extended numbers were seen: tells a duplicate from a late
/// packet that still has a place.
#[derive(Debug, Clone)]
pub struct SeenWindow {
    /// Bit i is set when `highest - i` was seen.
    bits: [u64; WORDS],
    highest: Option<u64>,
}

const WORDS: usize = 8;
/// Packets back from the highest that are still told apart (about 1.5 s of 2 Mbit/s video).
pub const WINDOW: u64 = (WORDS * 64) as u64;

/// What [`SeenWindow::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    /// Further back than the window: cannot tell, so it counts as too old.
    OutOfWindow,
}

impl Default for SeenWindow {
    fn default() -> Self {
        SeenWindow {
            bits: [0; WORDS],
            highest: None,
        }
    }
}

impl SeenWindow {
    pub fn insert(&mut self, ext: u64) -> Seen {
        let Some(highest) = self.highest else {
            self.highest = Some(ext);
            self.bits = [0; WORDS];
            self.bits[0] = 1;
            return Seen::New;
        };
        if ext > highest {
            self.shift(ext - highest);
            self.highest = Some(ext);
            self.bits[0] |= 1;
            return Seen::New;
        }
        let back = highest - ext;
        if back >= WINDOW {
            return Seen::OutOfWindow;
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if self.bits[word] & (1 << bit) != 0 {
            Seen::Duplicate
        } else {
            self.bits[word] |= 1 << bit;
            Seen::New
        }
    }

    /// Whether the `n` numbers up to the highest (`n` at most 64) were all seen.
    pub fn recent_complete(&self, n: u32) -> bool {
        let mask = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        self.highest.is_some() && self.bits[0] & mask == mask
    }

    /// Moves every bit `by` places towards the old end.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..WORDS).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.bits[s]);
            let lo = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.bits[s]);
            self.bits[i] = if bits == 0 {
                hi
            } else {
                (hi << bits) | (lo >> (64 - bits))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extends_across_many_wraps_forward() {
        let mut u = SeqUnwrapper::default();
        let first = u.extend(65_000);
        let mut seq = 65_000u16;
        for i in 1..=300_000u64 {
            seq = seq.wrapping_add(1);
            assert_eq!(u.extend(seq), first + i);
        }
    }

    #[test]
    fn late_packets_land_before_the_highest_even_across_a_wrap() {
        let mut u = SeqUnwrapper::default();
        let a = u.extend(65_535);
        let b = u.extend(2);
        assert_eq!(b, a + 3);
        // 65,534 arrives late, after the wrap: it is older, not 65,534 packets newer.
        assert_eq!(u.extend(65_534), a - 1);
        assert_eq!(u.highest(), Some(b));
        // Before the very first packet seen.
        let mut fresh = SeqUnwrapper::default();
        let first = fresh.extend(0);
        assert_eq!(fresh.extend(65_535), first - 1);
    }

    #[test]
    fn the_window_tells_duplicates_from_late_packets() {
        let mut w = SeenWindow::default();
        assert_eq!(w.insert(1000), Seen::New);
        assert_eq!(w.insert(1002), Seen::New);
        assert_eq!(w.insert(1001), Seen::New);
        assert_eq!(w.insert(1001), Seen::Duplicate);
        assert_eq!(w.insert(1002), Seen::Duplicate);
        assert_eq!(w.insert(1000 + 70), Seen::New);
        assert_eq!(w.insert(1000), Seen::Duplicate);
        assert_eq!(w.insert(1003), Seen::New);
        assert_eq!(w.insert(1003 + WINDOW + 100), Seen::New);
        assert_eq!(w.insert(1003), Seen::OutOfWindow);
        assert_eq!(w.insert(1003 + WINDOW + 99), Seen::New);
        assert_eq!(w.insert(1003 + WINDOW + 99), Seen::Duplicate);
    }

    #[test]
    fn the_window_shifts_by_any_amount() {
        for step in [1u64, 3, 63, 64, 65, 127, 128, 200, 511] {
            let mut w = SeenWindow::default();
            let mut seen = Vec::new();
            let mut ext = 10_000u64;
            for _ in 0..40 {
                assert_eq!(w.insert(ext), Seen::New, "step {step}");
                seen.push(ext);
                ext += step;
            }
            let highest = *seen.last().unwrap();
            for s in seen {
                let expect = if highest - s >= WINDOW {
                    Seen::OutOfWindow
                } else {
                    Seen::Duplicate
                };
                assert_eq!(w.insert(s), expect, "step {step}, {s}");
            }
        }
    }
}
