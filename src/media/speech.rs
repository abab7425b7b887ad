//! Who is speaking, from the audio level each publisher writes on its packets (RFC 6464: the
//! level in -dBov, 0 the loudest and 127 silence), so the server can name the active speaker
//! without decoding a sample.
//!
//! A track counts as speaking over an interval when enough of its packets are louder than a
//! threshold (one loud packet is a click, not speech); it stays speaking a short while after,
//! so a pause between words does not drop it.

use std::time::{Duration, Instant};

/// Louder than this (in -dBov) is speech; background noise in a quiet room sits below.
const SPEECH_DBOV: u8 = 50;
/// The share of an interval's packets that must be speech.
const SPEECH_SHARE: f32 = 0.3;
/// How long a speaker stays after its last speaking interval.
const HOLD: Duration = Duration::from_millis(600);
/// The weight of each speaking interval in the smoothed level.
const SMOOTHING: f32 = 0.5;

/// One audio track's level, interval by interval.
#[derive(Debug, Default, Clone)]
pub struct SpeechMeter {
    packets: u32,
    loud: u32,
    /// The sum of the loud packets' levels, 0–1 each.
    loudness: f32,
    level: f32,
    last_spoke: Option<Instant>,
}

impl SpeechMeter {
    /// One packet's audio level extension (its first byte: voice-activity bit, then -dBov).
    pub fn observe(&mut self, extension: u8) {
        let dbov = extension & 0x7f;
        self.packets += 1;
        if dbov <= SPEECH_DBOV {
            self.loud += 1;
            self.loudness += 1.0 - f32::from(dbov) / 127.0;
        }
    }

    /// Ends an interval: how loud the track speaks (0–1), or `None` when it does not.
    pub fn take(&mut self, now: Instant) -> Option<f32> {
        let (packets, loud, loudness) = (self.packets, self.loud, self.loudness);
        self.packets = 0;
        self.loud = 0;
        self.loudness = 0.0;
        if packets > 0 && loud as f32 >= packets as f32 * SPEECH_SHARE {
            let level = loudness / loud as f32;
            self.level = if self.last_spoke.is_some() {
                self.level + SMOOTHING * (level - self.level)
            } else {
                level
            };
            self.last_spoke = Some(now);
            return Some(self.level);
        }
        match self.last_spoke {
            Some(at) if now.saturating_duration_since(at) < HOLD => Some(self.level),
            _ => {
                self.last_spoke = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_is_most_packets_loud_and_holds_over_a_pause() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut m = SpeechMeter::default();
        // Silence (127) and a quiet room (-70 dBov): nobody speaks.
        for _ in 0..10 {
            m.observe(127);
        }
        assert_eq!(m.take(at(200)), None);
        for _ in 0..10 {
            m.observe(70);
        }
        assert_eq!(m.take(at(400)), None);
        // One click among silence is not speech.
        m.observe(10);
        for _ in 0..9 {
            m.observe(127);
        }
        assert_eq!(m.take(at(600)), None);
        // Speech at -25 dBov (with the voice bit set).
        for _ in 0..10 {
            m.observe(0x80 | 25);
        }
        let level = m.take(at(800)).expect("speaking");
        assert!((level - (1.0 - 25.0 / 127.0)).abs() < 1e-6);
        // A pause between words: still speaking; a longer silence: not.
        for _ in 0..10 {
            m.observe(127);
        }
        assert!(m.take(at(1_000)).is_some());
        assert_eq!(m.take(at(1_500)), None);
        // Louder speech ranks higher than quieter.
        let mut loud = SpeechMeter::default();
        let mut quiet = SpeechMeter::default();
        for _ in 0..10 {
            loud.observe(10);
            quiet.observe(45);
        }
        assert!(loud.take(at(200)).unwrap() > quiet.take(at(200)).unwrap());
    }
}
