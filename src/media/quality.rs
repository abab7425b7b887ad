//! A participant's connection quality as the server sees it: loss on what it sends (from the
//! sequence numbers of its streams) and on what it receives (its feedback), the round trip,
//! and whether its bandwidth holds its video back; scored in the protocol's four words, worse
//! at once and better only once it has held.

use std::time::Duration;

/// The protocol's words for a connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Lost,
    Poor,
    Good,
    Excellent,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Excellent => "excellent",
            Quality::Good => "good",
            Quality::Poor => "poor",
            Quality::Lost => "lost",
        }
    }
}

/// Loss above these fractions makes a connection good rather than excellent, poor rather
/// than good (after repair a viewer sees glitches from a few per cent; past ten, frozen video
/// and broken audio).
const GOOD_LOSS: f64 = 0.02;
const POOR_LOSS: f64 = 0.10;
/// Round trips above these hurt conversation, then make repair too slow to help.
const GOOD_RTT: Duration = Duration::from_millis(250);
const POOR_RTT: Duration = Duration::from_millis(500);

/// What one look at a participant's connection found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    /// Its connections are up (a connection that went down, or media that stopped arriving
    /// while it publishes, is lost).
    pub connected: bool,
    /// Fraction lost of what it sent and of what it was sent, the worse of the two.
    pub loss: f64,
    pub rtt: Option<Duration>,
    /// Its bandwidth keeps some video below the layer its view wants.
    pub held_back: bool,
    /// Its bandwidth paused a video track altogether.
    pub paused: bool,
}

/// The quality `observed` shows.
pub fn score(observed: &Observed) -> Quality {
    if !observed.connected {
        return Quality::Lost;
    }
    let rtt = observed.rtt.unwrap_or_default();
    if observed.loss > POOR_LOSS || rtt > POOR_RTT || observed.paused {
        Quality::Poor
    } else if observed.loss > GOOD_LOSS || rtt > GOOD_RTT || observed.held_back {
        Quality::Good
    } else {
        Quality::Excellent
    }
}

/// Looks in a row a better score must hold before it is announced: a worse one goes at once.
const BETTER_AFTER: u8 = 3;

/// One participant's announced quality.
#[derive(Debug, Clone, Copy, Default)]
pub struct QualityMeter {
    announced: Option<Quality>,
    better: Option<(Quality, u8)>,
}

impl QualityMeter {
    /// The newest look's score: the quality to announce, when it changed.
    pub fn update(&mut self, now: Quality) -> Option<Quality> {
        let Some(announced) = self.announced else {
            self.announced = Some(now);
            return Some(now);
        };
        if now < announced {
            self.better = None;
            self.announced = Some(now);
            return Some(now);
        }
        if now == announced {
            self.better = None;
            return None;
        }
        let held = self.better.map_or(1, |(_, n)| n + 1);
        // Towards the lowest of the better scores seen meanwhile.
        let towards = self.better.map_or(now, |(q, _)| q.min(now));
        if held >= BETTER_AFTER {
            self.better = None;
            self.announced = Some(towards);
            return Some(towards);
        }
        self.better = Some((towards, held));
        None
    }

    pub fn announced(&self) -> Option<Quality> {
        self.announced
    }
}

/// Loss on one incoming stream, from its sequence numbers: packets expected (the extended
/// highest number's advance) against packets that arrived, between two looks (RFC 3550
/// A.3). A packet repaired by retransmission counts as arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamLoss {
    first: u64,
    highest: Option<u64>,
    received: u64,
    looked: Option<(u64, u64)>,
}

impl StreamLoss {
    pub fn on_packet(&mut self, seq: u16) {
        self.received += 1;
        let extended = match self.highest {
            None => {
                self.first = u64::from(seq) + (1 << 16);
                self.first
            }
            Some(h) => {
                let base = h & !0xffff;
                let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
                candidates
                    .into_iter()
                    .map(|b| b + u64::from(seq))
                    .min_by_key(|c| c.abs_diff(h))
                    .unwrap_or(h)
            }
        };
        self.highest = Some(self.highest.map_or(extended, |h| h.max(extended)));
    }

    /// (expected, arrived) since the last look (the first: since the first packet).
    pub fn take(&mut self) -> (u64, u64) {
        let Some(highest) = self.highest else {
            return (0, 0);
        };
        let (then_highest, then_received) = self.looked.unwrap_or((self.first - 1, 0));
        self.looked = Some((highest, self.received));
        (highest - then_highest, self.received - then_received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(loss: f64, rtt_ms: u64) -> Observed {
        Observed {
            connected: true,
            loss,
            rtt: Some(Duration::from_millis(rtt_ms)),
            ..Observed::default()
        }
    }

    #[test]
    fn scores_from_loss_round_trip_and_bandwidth() {
        assert_eq!(score(&seen(0.0, 20)), Quality::Excellent);
        assert_eq!(score(&seen(0.03, 20)), Quality::Good);
        assert_eq!(score(&seen(0.0, 300)), Quality::Good);
        assert_eq!(score(&seen(0.15, 20)), Quality::Poor);
        assert_eq!(score(&seen(0.0, 600)), Quality::Poor);
        let held = Observed {
            held_back: true,
            ..seen(0.0, 20)
        };
        assert_eq!(score(&held), Quality::Good);
        let paused = Observed {
            paused: true,
            ..seen(0.0, 20)
        };
        assert_eq!(score(&paused), Quality::Poor);
        assert_eq!(score(&Observed::default()), Quality::Lost);
    }

    #[test]
    fn worse_is_told_at_once_better_once_it_held() {
        let mut m = QualityMeter::default();
        assert_eq!(m.update(Quality::Excellent), Some(Quality::Excellent));
        assert_eq!(m.update(Quality::Excellent), None);
        assert_eq!(m.update(Quality::Poor), Some(Quality::Poor));
        assert_eq!(m.update(Quality::Excellent), None);
        assert_eq!(m.update(Quality::Good), None);
        // Three better looks in a row: the least of them.
        assert_eq!(m.update(Quality::Excellent), Some(Quality::Good));
        assert_eq!(m.announced(), Some(Quality::Good));
        // A wobble back resets the count.
        assert_eq!(m.update(Quality::Excellent), None);
        assert_eq!(m.update(Quality::Good), None);
        assert_eq!(m.update(Quality::Excellent), None);
        assert_eq!(m.update(Quality::Excellent), None);
        assert_eq!(m.update(Quality::Excellent), Some(Quality::Excellent));
        assert_eq!(m.update(Quality::Lost), Some(Quality::Lost));
    }

    #[test]
    fn stream_loss_counts_gaps_across_the_wrap() {
        let mut s = StreamLoss::default();
        assert_eq!(s.take(), (0, 0));
        for seq in 65_000u16..=65_535 {
            s.on_packet(seq);
        }
        assert_eq!(s.take(), (536, 536));
        // Every tenth lost, through the wrap, one arriving late.
        let mut late = None;
        for n in 0u32..2_000 {
            let seq = (65_536 + n) as u16;
            if n % 10 == 0 {
                continue;
            }
            if n == 5 {
                late = Some(seq);
                continue;
            }
            s.on_packet(seq);
            if n == 7 {
                s.on_packet(late.unwrap());
            }
        }
        assert_eq!(s.take(), (2_000, 1_800));
        assert_eq!(s.take(), (0, 0));
    }
}
