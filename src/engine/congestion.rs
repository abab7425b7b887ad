//! A subscriber connection's congestion control: the transport-wide sequence number on each
//! packet sent to it, the bandwidth estimate its feedback gives (REMB when it sends no
//! transport-wide feedback), and the padding a probe for more takes.

use std::time::{Duration, Instant};

use interceptor::convert_twcc;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

use crate::media::bwe::SendSideEstimator;

/// How each subscriber's estimate starts and what bounds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BweSettings {
    /// Bits a second before the first feedback.
    pub start: f64,
    pub max: f64,
}

impl BweSettings {
    /// No estimate goes below this: audio and the lowest layer of a screen share.
    pub const MIN: f64 = 150_000.0;
}

/// What protection adds to each packet (the SRTP authentication tag, at most).
const SRTP_OVERHEAD: usize = 16;

/// Most padding written at once: a probe's packets are spread over its duration.
const MAX_PADDING_BURST: usize = 8 * 1024;

/// A REMB this far below the highest one says the link is the limit.
const REMB_FALL: f64 = 0.85;

/// A probe's padding goes out in steps this far apart.
pub const PADDING_EVERY: Duration = Duration::from_millis(5);

pub struct Congestion {
    estimator: SendSideEstimator,
    /// Transport-wide feedback arrived: the estimator runs.
    twcc: bool,
    /// The subscriber's own estimate, when it sends REMB instead, and the highest it sent.
    remb: Option<f64>,
    remb_peak: f64,
    /// REMB fell: the subscriber's link is the limit.
    remb_fell: bool,
    probe: Option<Probe>,
    /// Bytes of retransmissions since the last [`Congestion::retransmission_rate`], and
    /// the smoothed rate.
    retransmitted: usize,
    retransmit_rate: f64,
    /// Bytes retransmissions may still take now, and when it was last refilled.
    repair_tokens: f64,
    repair_refilled: Option<Instant>,
}

/// Of a constrained link, retransmissions may take at most this share: past it, more repair
/// only adds to the queue that lost the packets.
const REPAIR_SHARE: f64 = 0.5;
/// The burst of retransmissions allowed at once, in seconds of that share.
const REPAIR_BURST: f64 = 0.2;

/// Weight of the newest interval in the smoothed retransmission rate.
const RETRANSMIT_SMOOTHING: f64 = 0.25;

/// A probe in progress: its rate, and what has been sent since it began.
#[derive(Debug, Clone, Copy)]
struct Probe {
    rate: f64,
    started: Instant,
    sent: usize,
}

impl Congestion {
    pub fn new(settings: BweSettings) -> Self {
        Congestion {
            estimator: SendSideEstimator::new(settings.start, BweSettings::MIN, settings.max),
            twcc: false,
            remb: None,
            remb_peak: 0.0,
            remb_fell: false,
            probe: None,
            retransmitted: 0,
            retransmit_rate: 0.0,
            repair_tokens: 0.0,
            repair_refilled: None,
        }
    }

    /// Whether a retransmission of `len` bytes fits the link now: always until the link has
    /// shown its limit, then within [`REPAIR_SHARE`] of the estimate.
    pub fn may_retransmit(&mut self, len: usize, now: Instant) -> bool {
        let Some(budget) = self.budget() else {
            return true;
        };
        let rate = budget * REPAIR_SHARE / 8.0;
        let burst = (rate * REPAIR_BURST).max(3_000.0);
        let elapsed = self.repair_refilled.map_or(REPAIR_BURST, |at| {
            now.saturating_duration_since(at).as_secs_f64()
        });
        self.repair_refilled = Some(now);
        self.repair_tokens = (self.repair_tokens + elapsed * rate).min(burst);
        let size = (len + SRTP_OVERHEAD) as f64;
        if self.repair_tokens < size {
            return false;
        }
        self.repair_tokens -= size;
        true
    }

    /// A retransmission of `len` bytes left.
    pub fn on_retransmitted(&mut self, len: usize) {
        self.retransmitted += len + SRTP_OVERHEAD;
    }

    /// Retransmissions, bits a second, smoothed over the calls `elapsed` apart: what repair
    /// takes of the budget, which the media must leave room for.
    pub fn retransmission_rate(&mut self, elapsed: Duration) -> f64 {
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            let now = std::mem::take(&mut self.retransmitted) as f64 * 8.0 / secs;
            self.retransmit_rate += (now - self.retransmit_rate) * RETRANSMIT_SMOOTHING;
        }
        self.retransmit_rate
    }

    /// A packet of `len` bytes leaves: the transport-wide sequence number it carries.
    pub fn on_sent(&mut self, len: usize, now: Instant) -> u16 {
        let size = len + SRTP_OVERHEAD;
        if let Some(p) = self.probe.as_mut() {
            p.sent += size;
        }
        self.estimator.on_sent(size, now)
    }

    pub fn on_twcc(&mut self, feedback: &TransportLayerCc, now: Instant) {
        self.twcc = true;
        self.estimator.on_feedback(&convert_twcc(feedback), now);
    }

    pub fn on_remb(&mut self, bitrate: f64) {
        self.remb = Some(bitrate);
        self.remb_peak = self.remb_peak.max(bitrate);
        self.remb_fell |= bitrate < self.remb_peak * REMB_FALL;
    }

    /// What the subscriber's downlink carries, bits a second, once the link has shown itself
    /// to be the limit (a backoff for delay or loss, a falling REMB). Until then everything
    /// the subscriber's views ask for is sent: an estimate that has only seen what was sent
    /// so far says nothing about what more would do, and holding back a new participant's
    /// video until a probe answers would delay every join. Once constrained, more comes
    /// through probing (TWCC) or the subscriber's own estimate (REMB).
    pub fn budget(&self) -> Option<f64> {
        if self.twcc {
            self.estimator
                .has_backed_off()
                .then(|| self.estimator.estimate())
        } else {
            self.remb.filter(|_| self.remb_fell)
        }
    }

    /// What the path has shown it carries (see [`SendSideEstimator::tested`]): the most a
    /// subscriber may go up to. Without transport-wide feedback, the budget.
    pub fn tested(&self, now: Instant) -> Option<f64> {
        let budget = self.budget()?;
        Some(if self.twcc {
            self.estimator.tested(now).min(budget)
        } else {
            budget
        })
    }

    /// Whether a probe has just shown the path carries the budget.
    pub fn proven(&self, now: Instant) -> bool {
        self.twcc && self.estimator.proven(now)
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.estimator.rtt()
    }

    /// The fraction of packets the subscriber reported lost since the last call.
    pub fn take_loss(&mut self) -> Option<f64> {
        self.estimator.take_loss()
    }

    /// The subscriber would take `wanted` bits a second: true when a probe for it starts now
    /// (the caller sends its padding, [`Congestion::padding_due`]). Only with transport-wide
    /// feedback: nothing else tells how a probe arrived.
    pub fn start_probe(&mut self, wanted: f64, now: Instant) -> bool {
        if !self.twcc || self.probe.is_some() {
            return false;
        }
        let Some(rate) = self.estimator.probe(wanted, now) else {
            return false;
        };
        self.probe = Some(Probe {
            rate,
            started: now,
            sent: 0,
        });
        true
    }

    /// The padding, in bytes, to send now to keep the probe at its rate (media sent counts);
    /// `None` once the probe is over.
    pub fn padding_due(&mut self, now: Instant) -> Option<usize> {
        let p = self.probe?;
        if self.estimator.probing(now).is_none() {
            self.probe = None;
            return None;
        }
        let elapsed = now.saturating_duration_since(p.started).as_secs_f64();
        let due = (p.rate * elapsed / 8.0) as usize;
        Some(due.saturating_sub(p.sent).min(MAX_PADDING_BURST))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BweSettings {
        BweSettings {
            start: 1_000_000.0,
            max: 10_000_000.0,
        }
    }

    #[test]
    fn retransmissions_take_at_most_half_of_a_constrained_link() {
        let t0 = Instant::now();
        let mut c = Congestion::new(settings());
        // Unconstrained: repair is not held back.
        assert!((0..100).all(|_| c.may_retransmit(1_184, t0)));
        // The subscriber's own estimate falls to 300 kbit/s: 150 kbit/s of repair, bursts
        // of 0.2 s (3,750 bytes).
        c.on_remb(1_000_000.0);
        c.on_remb(300_000.0);
        assert_eq!(c.budget(), Some(300_000.0));
        let sent = (0..10).filter(|_| c.may_retransmit(1_184, t0)).count();
        assert_eq!(sent, 3);
        let later = t0 + Duration::from_millis(100);
        assert!(c.may_retransmit(1_184, later));
        assert!(!c.may_retransmit(1_184, later));
        // Over a second, about the share and no more.
        let mut bytes = 0;
        for ms in 0..1_000 {
            let at = later + Duration::from_millis(ms);
            if c.may_retransmit(1_184, at) {
                bytes += 1_200;
            }
        }
        assert!((16_000..=22_000).contains(&bytes), "{bytes} bytes in 1 s");
    }

    #[test]
    fn the_retransmission_rate_is_smoothed_over_calls() {
        let mut c = Congestion::new(settings());
        let quarter = Duration::from_millis(250);
        let mut rate = 0.0;
        for _ in 0..20 {
            for _ in 0..25 {
                c.on_retransmitted(1_234);
            }
            rate = c.retransmission_rate(quarter);
        }
        // 25 packets of 1,250 bytes every 250 ms: 1 Mbit/s.
        assert!((980_000.0..=1_000_000.0).contains(&rate), "{rate}");
        // One quiet interval does not erase it; a few seconds do.
        assert!(c.retransmission_rate(quarter) > 700_000.0);
        for _ in 0..20 {
            c.retransmission_rate(quarter);
        }
        assert!(c.retransmission_rate(quarter) < 10_000.0);
    }
}
