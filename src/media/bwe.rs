//! A send-side bandwidth estimate for one subscriber (transport-wide congestion control).
//!
//! Every packet sent to the subscriber carries a transport-wide sequence number
//! (draft-holmer-rmcat-transport-wide-cc-extensions); the subscriber reports when each arrived,
//! or that it did not. Departure joined with arrival, per packet in send order, drives Google
//! Congestion Control: the delay trendline and overuse detector of `rtc-interceptor`, an AIMD
//! rate controller and a loss rule of our own, and probing.
//!
//! Why our own controller: the SFU sends a subscriber what its layers weigh, mostly less than
//! the estimate (application-limited). An estimate that grows while nothing tests it is a guess;
//! one that never grows past what is sent can never allow a higher layer. So the estimate grows
//! only up to a margin over what is acknowledged, and to go further the sender probes: a short
//! cluster of packets at a higher rate (padding, [`SendSideEstimator::probe`]); if the
//! subscriber receives it at that rate without queueing, the estimate jumps there.
//!
//! What was sent is kept in a ring indexed by the sequence number, a fixed array: no allocation
//! or hashing per packet.

use std::time::{Duration, Instant};

use interceptor::{
    Acknowledgement, OveruseDetector, PacketReport, RateCalculator, SlopeEstimator, Usage,
};

/// Packets remembered for feedback: a second and more of a busy subscriber's packets.
const RING: usize = 1 << 13;
/// How often the rate may go up, and how much in a second away from the last ceiling.
const INCREASE_INTERVAL: Duration = Duration::from_millis(200);
const INCREASE_PER_SECOND: f64 = 1.08;
/// Near the last ceiling, the rate goes up by this much each interval (200 kbit/s a second).
const ADDITIVE_STEP: f64 = 40_000.0;
/// On overuse, back to this fraction of what was received.
const DECREASE_FACTOR: f64 = 0.85;
/// Without a probe, the estimate stays within this of what is acknowledged (plus a floor).
const ACKED_MARGIN: f64 = 1.5;
const ACKED_FLOOR: f64 = 100_000.0;
/// Loss above this backs off; below the lower one does not stop growth.
const HIGH_LOSS: f64 = 0.10;
const LOW_LOSS: f64 = 0.02;
/// A probe cluster: how long, and how far above the estimate at most.
const PROBE_DURATION: Duration = Duration::from_millis(300);
const PROBE_FACTOR: f64 = 1.5;
/// Between probes; after a failed one, longer.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_BACKOFF: Duration = Duration::from_secs(6);
/// A probe succeeds when this much of its rate arrives.
const PROBE_DELIVERED: f64 = 0.85;

#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Extended transport-wide sequence number.
    seq: u64,
    size: u32,
    at: Instant,
    /// The probe cluster it belongs to.
    cluster: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Cluster {
    id: u32,
    rate: f64,
    until: Instant,
    /// The extended numbers of its first and last packets.
    first: Option<u64>,
    last: u64,
}

/// What a probe cluster's feedback added up to.
#[derive(Debug, Default, Clone, Copy)]
struct ClusterResult {
    bytes: u64,
    first_arrival: Option<Duration>,
    last_arrival: Option<Duration>,
    last_size: u64,
    lost: u32,
    seen_last: bool,
}

pub struct SendSideEstimator {
    ring: Box<[Option<Sent>]>,
    /// The next extended sequence number to send.
    next: u64,
    slope: SlopeEstimator,
    detector: OveruseDetector,
    acked: RateCalculator,
    usage: Usage,
    target: f64,
    min: f64,
    max: f64,
    last_change: Option<Instant>,
    last_decrease: Option<Instant>,
    /// What was received when it last backed off: the ceiling to approach carefully.
    ceiling: Option<f64>,
    /// The last round trip a report implied (feedback delay included).
    rtt: Option<Duration>,
    /// Packets reported, and of them lost, since the last [`SendSideEstimator::take_loss`].
    reported: u32,
    lost: u32,
    cluster: Option<Cluster>,
    result: ClusterResult,
    next_cluster_id: u32,
    next_probe_at: Option<Instant>,
}

impl SendSideEstimator {
    /// Starts at `initial` bits a second, never below `min` nor above `max`.
    pub fn new(initial: f64, min: f64, max: f64) -> Self {
        SendSideEstimator {
            ring: vec![None; RING].into_boxed_slice(),
            next: 0,
            slope: SlopeEstimator::new(),
            detector: OveruseDetector::default(),
            acked: RateCalculator::default(),
            usage: Usage::Normal,
            target: initial.clamp(min, max),
            min,
            max,
            last_change: None,
            last_decrease: None,
            ceiling: None,
            rtt: None,
            reported: 0,
            lost: 0,
            cluster: None,
            result: ClusterResult::default(),
            next_cluster_id: 0,
            next_probe_at: None,
        }
    }

    /// A packet of `size` bytes leaves now: the sequence number to write into it.
    pub fn on_sent(&mut self, size: usize, now: Instant) -> u16 {
        let seq = self.next;
        self.next += 1;
        let cluster = self.cluster.as_mut().filter(|c| now < c.until).map(|c| {
            c.first.get_or_insert(seq);
            c.last = seq;
            c.id
        });
        self.ring[seq as usize % RING] = Some(Sent {
            seq,
            size: size as u32,
            at: now,
            cluster,
        });
        seq as u16
    }

    /// The extended number of a 16-bit one from feedback: the nearest below what was sent.
    fn extend(&self, seq: u16) -> u64 {
        let next = self.next;
        let candidate = (next & !0xffff) | u64::from(seq);
        if candidate >= next {
            candidate.saturating_sub(1 << 16)
        } else {
            candidate
        }
    }

    /// A feedback report's acknowledgements, in its order.
    pub fn on_feedback(&mut self, acknowledgements: &[Acknowledgement], now: Instant) {
        let mut reports = Vec::with_capacity(acknowledgements.len());
        for ack in acknowledgements {
            let seq = self.extend(ack.sequence_number);
            let Some(sent) = self.ring[seq as usize % RING].filter(|s| s.seq == seq) else {
                continue;
            };
            self.reported += 1;
            if ack.arrived {
                self.rtt = Some(now.saturating_duration_since(sent.at));
            } else {
                self.lost += 1;
            }
            if let Some(c) = self.cluster.filter(|c| sent.cluster == Some(c.id)) {
                self.note_probe(&c, seq, sent.size, ack);
            }
            reports.push(PacketReport {
                ssrc: 0,
                id: seq,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: ack.sequence_number,
                size: sent.size as usize,
                arrived: ack.arrived,
                departure: sent.at,
                arrival: ack.arrival,
                ecn: ack.ecn,
            });
        }
        reports.sort_by_key(|r| r.id);
        self.update(now, &reports);
        self.finish_probe(now);
    }

    fn update(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        for report in reports {
            if report.arrived {
                self.acked.add(now, report.size);
            }
            if let Some(trend) = self.slope.accumulate(report) {
                self.usage = self.detector.update(trend.at, trend.estimate_ms);
            }
        }
        let received = self.acked.rate_bits_per_second(now);
        let lost = reports.iter().filter(|r| !r.arrived).count() as f64 / reports.len() as f64;
        match self.usage {
            Usage::Over => self.decrease(now, received),
            Usage::Under => {}
            Usage::Normal => self.increase(now, received),
        }
        let backed_off_lately = self
            .last_decrease
            .is_some_and(|at| now.saturating_duration_since(at) < INCREASE_INTERVAL);
        if lost > HIGH_LOSS && !backed_off_lately {
            // What arrives is what the path carries; the lost part was too much.
            let floor = received.map_or(0.0, |r| r * DECREASE_FACTOR);
            self.target = (self.target * (1.0 - 0.5 * lost)).max(floor);
            self.ceiling = received.or(Some(self.target));
            self.last_decrease = Some(now);
            self.last_change = Some(now);
        }
        if let Some(received) = received {
            // Application-limited: what has not been tested is not known.
            if lost <= LOW_LOSS || self.usage != Usage::Normal {
                self.target = self.target.min(received * ACKED_MARGIN + ACKED_FLOOR);
            }
        }
        self.target = self.target.clamp(self.min, self.max);
    }

    fn decrease(&mut self, now: Instant, received: Option<f64>) {
        // Once per round trip or so: the same queue must not be counted twice.
        if self
            .last_decrease
            .is_some_and(|at| now.saturating_duration_since(at) < INCREASE_INTERVAL)
        {
            return;
        }
        let from = received.unwrap_or(self.target).min(self.target);
        self.target = from * DECREASE_FACTOR;
        self.ceiling = Some(from);
        self.last_decrease = Some(now);
        self.last_change = Some(now);
    }

    fn increase(&mut self, now: Instant, received: Option<f64>) {
        let elapsed = self
            .last_change
            .map_or(INCREASE_INTERVAL, |at| now.saturating_duration_since(at));
        if elapsed < INCREASE_INTERVAL || received.is_none() {
            return;
        }
        let near_ceiling = self
            .ceiling
            .is_some_and(|c| self.target > c * 0.85 && self.target < c * 1.15);
        self.target = if near_ceiling {
            self.target + ADDITIVE_STEP
        } else {
            self.target * INCREASE_PER_SECOND.powf(elapsed.as_secs_f64().min(1.0))
        };
        self.last_change = Some(now);
    }

    fn note_probe(&mut self, cluster: &Cluster, seq: u64, size: u32, ack: &Acknowledgement) {
        let r = &mut self.result;
        if !ack.arrived {
            r.lost += 1;
        } else if let Some(at) = ack.arrival {
            r.bytes += u64::from(size);
            r.last_size = u64::from(size);
            r.first_arrival = Some(r.first_arrival.map_or(at, |f| f.min(at)));
            r.last_arrival = Some(r.last_arrival.map_or(at, |l| l.max(at)));
        }
        if seq == cluster.last {
            r.seen_last = true;
        }
    }

    /// A probe cluster whose feedback is all in: the estimate goes to what it delivered.
    fn finish_probe(&mut self, now: Instant) {
        let Some(cluster) = self.cluster else {
            return;
        };
        if now < cluster.until || !self.result.seen_last {
            // Its feedback may be lost: give it up after a while.
            if now.saturating_duration_since(cluster.until) > Duration::from_secs(1) {
                self.cluster = None;
                self.next_probe_at = Some(now + PROBE_BACKOFF);
            }
            return;
        }
        let r = std::mem::take(&mut self.result);
        self.cluster = None;
        let delivered = match (r.first_arrival, r.last_arrival) {
            (Some(first), Some(last)) if last > first => {
                // The first packet's bytes arrived before the span began.
                (r.bytes.saturating_sub(r.last_size)) as f64 * 8.0 / (last - first).as_secs_f64()
            }
            _ => 0.0,
        };
        let ok =
            r.lost == 0 && self.usage != Usage::Over && delivered >= cluster.rate * PROBE_DELIVERED;
        if ok {
            let reached = delivered.min(cluster.rate);
            if reached > self.target {
                self.target = reached.clamp(self.min, self.max);
                self.ceiling = None;
                self.last_change = Some(now);
            }
            self.next_probe_at = Some(now + PROBE_EVERY);
        } else {
            self.next_probe_at = Some(now + PROBE_BACKOFF);
        }
    }

    /// The application would send `wanted` bits a second if it could: the rate to fill up to
    /// with padding now, while a probe runs. A probe starts when `wanted` is above the estimate
    /// and the last probe is long enough ago.
    pub fn probe(&mut self, wanted: f64, now: Instant) -> Option<f64> {
        if let Some(c) = self.cluster {
            return (now < c.until).then_some(c.rate);
        }
        if wanted <= self.target * 1.05 || self.next_probe_at.is_some_and(|at| now < at) {
            return None;
        }
        let rate = wanted.min(self.target * PROBE_FACTOR).min(self.max);
        self.next_cluster_id += 1;
        self.cluster = Some(Cluster {
            id: self.next_cluster_id,
            rate,
            until: now + PROBE_DURATION,
            first: None,
            last: 0,
        });
        self.result = ClusterResult::default();
        Some(rate)
    }

    /// The budget, bits a second.
    pub fn estimate(&self) -> f64 {
        self.target
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The fraction of reported packets lost since the last call.
    pub fn take_loss(&mut self) -> Option<f64> {
        let reported = std::mem::take(&mut self.reported);
        let lost = std::mem::take(&mut self.lost);
        (reported > 0).then(|| f64::from(lost) / f64::from(reported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
    use std::collections::VecDeque;

    /// A bottleneck of `capacity(t)` bits a second with a drop-tail queue and a fixed delay,
    /// between a sender that paces at its estimate (up to `demand`) and a receiver that sends
    /// feedback every 50 ms: the estimate over time, one sample a second.
    fn run(seconds: u64, demand: f64, capacity: impl Fn(Duration) -> f64) -> Vec<f64> {
        const PACKET: usize = 1200;
        const BASE_DELAY: Duration = Duration::from_millis(25);
        const QUEUE_LIMIT: Duration = Duration::from_millis(300);
        let t0 = Instant::now();
        let mut bwe = SendSideEstimator::new(300_000.0, 30_000.0, 20_000_000.0);
        // Link: when the last packet queued leaves it.
        let mut link_free = Duration::ZERO;
        let mut pending: VecDeque<Acknowledgement> = VecDeque::new();
        let mut in_flight: VecDeque<(Duration, Acknowledgement)> = VecDeque::new();
        let mut next_send = Duration::ZERO;
        let mut next_feedback = Duration::from_millis(50);
        let mut samples = Vec::new();
        let step = Duration::from_millis(1);
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(seconds) {
            let now = t0 + t;
            // Send what the estimate allows of the demand, or the probe's rate while one runs.
            let probe = bwe.probe(demand, now);
            while next_send <= t {
                let rate = probe.unwrap_or(0.0).max(bwe.estimate().min(demand));
                let seq = bwe.on_sent(PACKET, now);
                let service = Duration::from_secs_f64(PACKET as f64 * 8.0 / capacity(t));
                let start = link_free.max(t);
                let ack = if start - t > QUEUE_LIMIT {
                    Acknowledgement::lost(seq)
                } else {
                    link_free = start + service;
                    Acknowledgement::received(seq, Some(link_free + BASE_DELAY), Ecn::default())
                };
                in_flight.push_back((link_free.max(t) + BASE_DELAY, ack));
                next_send += Duration::from_secs_f64(PACKET as f64 * 8.0 / rate);
            }
            while in_flight.front().is_some_and(|(at, _)| *at <= t) {
                pending.push_back(in_flight.pop_front().unwrap().1);
            }
            if t >= next_feedback {
                next_feedback += Duration::from_millis(50);
                let acks: Vec<Acknowledgement> = pending.drain(..).collect();
                // Feedback comes back over an uncongested path.
                bwe.on_feedback(&acks, now + BASE_DELAY);
            }
            if t.as_millis() % 1000 == 999 {
                samples.push(bwe.estimate());
            }
            t += step;
        }
        samples
    }

    fn within(value: f64, target: f64, fraction: f64) -> bool {
        (value - target).abs() <= target * fraction
    }

    #[test]
    fn converges_to_a_constant_capacity() {
        let capacity = 1_500_000.0;
        let samples = run(20, 3_000_000.0, |_| capacity);
        let at_10s = samples[9];
        eprintln!("estimate by the second: {samples:?}");
        assert!(within(at_10s, capacity, 0.15), "at 10 s: {at_10s}");
        assert!(
            samples[9..].iter().all(|&e| within(e, capacity, 0.15)),
            "from 10 s on within 15 % of {capacity}: {samples:?}"
        );
    }

    #[test]
    fn follows_a_step_down_within_two_seconds_and_a_step_up_within_ten() {
        let samples = run(45, 3_000_000.0, |t| {
            if t < Duration::from_secs(15) || t >= Duration::from_secs(25) {
                2_000_000.0
            } else {
                500_000.0
            }
        });
        eprintln!("estimate by the second: {samples:?}");
        // Down at 15 s: at most 2 s later the estimate is near the new capacity.
        assert!(
            samples[16] <= 500_000.0 * 1.15,
            "2 s after the step down: {}",
            samples[16]
        );
        // Up at 25 s: within 10 s it has grown back near the old capacity.
        assert!(
            within(samples[34], 2_000_000.0, 0.15),
            "10 s after the step up: {}",
            samples[34]
        );
    }
}
