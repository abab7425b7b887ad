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

use std::collections::VecDeque;

use interceptor::{Acknowledgement, OveruseDetector, PacketReport, SlopeEstimator, Usage};

/// Packets remembered for feedback: feedback comes every 50–100 ms, so this is a second of a
/// subscriber receiving 1,000 packets a second, at 32 bytes each.
const RING: usize = 1 << 10;
/// How often the rate may go up, and how much in a second away from the last ceiling.
const INCREASE_INTERVAL: Duration = Duration::from_millis(200);
const INCREASE_PER_SECOND: f64 = 1.08;
/// Near the last ceiling, the rate goes up by this much each interval (100 kbit/s a second).
const ADDITIVE_STEP: f64 = 20_000.0;
/// On overuse, back to this fraction of what was received.
const DECREASE_FACTOR: f64 = 0.9;
/// Without a probe, the estimate stays within this of what is acknowledged (plus a floor).
const ACKED_MARGIN: f64 = 1.5;
const ACKED_FLOOR: f64 = 100_000.0;
/// Loss above this backs off; below the lower one does not stop growth.
const HIGH_LOSS: f64 = 0.10;
const LOW_LOSS: f64 = 0.02;
const MAX_GROUPS_SUMMED: u32 = 60;
/// An overuse that lasts this long after a backoff backs off again.
const OVERUSE_AGAIN: Duration = Duration::from_secs(1);
/// Loss is smoothed over about this many packets.
const LOSS_SMOOTHING: f64 = 50.0;
/// A probe cluster: how long, and how far above the estimate at most.
const PROBE_DURATION: Duration = Duration::from_millis(300);
const PROBE_FACTOR: f64 = 2.0;
const PROBE_FACTOR_NEAR_LIMIT: f64 = 1.5;
/// After a probe that delivered its rate the next (up to twice as high) goes soon, as a
/// browser's ramp-up does; after a failed one, later.
const PROBE_AGAIN: Duration = Duration::from_millis(500);
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe of which this much arrived delivered all of its rate.
const PROBE_FULL: f64 = 0.95;
const PROBE_BACKOFF: Duration = Duration::from_secs(6);
/// A probe that fell short leaves the estimate at this much of what it delivered.
const PROBE_SHORTFALL: f64 = 0.9;
/// A probe succeeds when this much of its rate arrives.
const PROBE_DELIVERED: f64 = 0.85;
/// What a probe showed is taken as shown, not guessed, for this long (layers go up at once).
const PROVEN_FOR: Duration = Duration::from_secs(2);
/// What a successful probe showed holds this long while less is sent: time for the caller to
/// move up to it (and for the next probe to confirm it).
const PROBE_HOLDS: Duration = Duration::from_secs(10);

/// What the subscriber received, bits a second, over the last `ARRIVAL_WINDOW` of its own
/// arrival times: the bytes that arrived after the first packet of the window, over the time
/// from it to the last. (Counting packets when their report comes in instead reads high by
/// a report interval over the window.)
#[derive(Debug, Default)]
struct ArrivalRate {
    /// Arrival (on the subscriber's clock) and size, in arrival order as reported.
    samples: VecDeque<(Duration, usize)>,
    bytes: usize,
}

const ARRIVAL_WINDOW: Duration = Duration::from_millis(500);

impl ArrivalRate {
    fn add(&mut self, at: Duration, size: usize) {
        self.samples.push_back((at, size));
        self.bytes += size;
        let latest = self.samples.iter().map(|(t, _)| *t).max().unwrap_or(at);
        while let Some(&(first, size)) = self.samples.front() {
            if latest.saturating_sub(first) <= ARRIVAL_WINDOW {
                break;
            }
            self.samples.pop_front();
            self.bytes -= size;
        }
    }

    fn rate(&self) -> Option<f64> {
        let (first, first_size) = *self.samples.front()?;
        let last = self.samples.iter().map(|(t, _)| *t).max()?;
        let span = last.saturating_sub(first);
        (self.samples.len() >= 2 && span >= Duration::from_millis(20))
            .then(|| (self.bytes - first_size) as f64 * 8.0 / span.as_secs_f64())
    }
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Extended transport-wide sequence number.
    seq: u64,
    at: Instant,
    size: u16,
    /// The probe cluster it belongs to (0: none).
    cluster: u16,
}

#[derive(Debug, Clone, Copy)]
struct Cluster {
    id: u16,
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
    received: u32,
    seen_last: bool,
}

pub struct SendSideEstimator {
    /// Empty until the first packet: a subscriber that never negotiates the extension costs
    /// nothing.
    ring: Vec<Option<Sent>>,
    /// The next extended sequence number to send.
    next: u64,
    slope: SlopeEstimator,
    detector: OveruseDetector,
    acked: ArrivalRate,
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
    next_cluster_id: u16,
    next_probe_at: Option<Instant>,
    /// The rate the last successful probe delivered, and when.
    probed: Option<(f64, Instant)>,
    /// The fraction of packets lost, smoothed.
    loss: f64,
    /// Arrival groups the delay filter has seen (up to `MAX_GROUPS_SUMMED`).
    groups: u32,
    /// The detector read overuse at the last report.
    overusing: bool,
}

impl SendSideEstimator {
    /// Starts at `initial` bits a second, never below `min` nor above `max`.
    pub fn new(initial: f64, min: f64, max: f64) -> Self {
        SendSideEstimator {
            ring: Vec::new(),
            next: 0,
            slope: SlopeEstimator::new(),
            detector: OveruseDetector::default(),
            acked: ArrivalRate::default(),
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
            probed: None,
            loss: 0.0,
            groups: 0,
            overusing: false,
        }
    }

    /// A packet of `size` bytes leaves now: the sequence number to write into it.
    pub fn on_sent(&mut self, size: usize, now: Instant) -> u16 {
        let seq = self.next;
        self.next += 1;
        if seq == 0 {
            // The start value is trusted as if probed: the first tracks start on the layers it
            // allows, and what is sent then tests it (overuse or loss takes it back).
            self.probed = Some((self.target, now));
        }
        let cluster = self
            .cluster
            .as_mut()
            .filter(|c| now < c.until)
            .map_or(0, |c| {
                c.first.get_or_insert(seq);
                c.last = seq;
                c.id
            });
        if self.ring.is_empty() {
            self.ring = vec![None; RING];
        }
        self.ring[seq as usize % RING] = Some(Sent {
            seq,
            at: now,
            size: u16::try_from(size).unwrap_or(u16::MAX),
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
            let Some(sent) = self
                .ring
                .get(seq as usize % RING)
                .copied()
                .flatten()
                .filter(|s| s.seq == seq)
            else {
                continue;
            };
            self.reported += 1;
            if ack.arrived {
                self.rtt = Some(now.saturating_duration_since(sent.at));
            } else {
                self.lost += 1;
            }
            if let Some(c) = self.cluster.filter(|c| sent.cluster == c.id) {
                self.note_probe(&c, seq, u32::from(sent.size), ack);
            }
            reports.push(PacketReport {
                ssrc: 0,
                id: seq,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: ack.sequence_number,
                size: usize::from(sent.size),
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
            if let Some(at) = report.arrival.filter(|_| report.arrived) {
                self.acked.add(at, report.size);
            }
            if let Some(trend) = self.slope.accumulate(report) {
                // The filter's offset is per group; the detector's threshold is for it summed
                // over up to 60 groups, as in libwebrtc's Kalman-based detector.
                self.groups = (self.groups + 1).min(MAX_GROUPS_SUMMED);
                let summed = trend.estimate_ms * f64::from(self.groups);
                self.usage = self.detector.update(trend.at, summed);
            }
        }
        let received = self.acked.rate();
        // Loss is smoothed over about `LOSS_SMOOTHING` packets, not judged per report: one
        // packet of a short report is not 12 % loss.
        let missing = reports.iter().filter(|r| !r.arrived).count() as f64;
        let weight = (reports.len() as f64 / LOSS_SMOOTHING).min(1.0);
        self.loss += weight * (missing / reports.len() as f64 - self.loss);
        let lost = Some(self.loss);
        let entered_overuse = self.usage == Usage::Over && !self.overusing;
        self.overusing = self.usage == Usage::Over;
        let overuse_persists = self.usage == Usage::Over
            && self
                .last_decrease
                .is_some_and(|at| now.saturating_duration_since(at) >= OVERUSE_AGAIN);
        match self.usage {
            // Once per overuse, and again only if it lasts: the queue drains after a backoff
            // while the filter still reads it growing.
            Usage::Over if entered_overuse || overuse_persists => self.decrease(now, received),
            Usage::Over => {}
            Usage::Under => {}
            Usage::Normal => self.increase(now, received),
        }
        let backed_off_lately = self
            .last_decrease
            .is_some_and(|at| now.saturating_duration_since(at) < INCREASE_INTERVAL);
        if let Some(lost) = lost.filter(|&l| l > HIGH_LOSS && !backed_off_lately) {
            // What arrives is what the path carries; the lost part was too much.
            let floor = received.map_or(0.0, |r| r * DECREASE_FACTOR);
            self.target = (self.target * (1.0 - 0.5 * lost)).max(floor);
            self.ceiling = received.or(Some(self.target));
            self.probed = None;
            // Counted once: what follows must show loss again.
            self.loss /= 2.0;
            self.last_decrease = Some(now);
            self.last_change = Some(now);
        }
        if let Some(received) = received {
            // Application-limited: what has not been tested is not known, unless a probe
            // tested it lately.
            let probed = self
                .probed
                .filter(|(_, at)| now.saturating_duration_since(*at) < PROBE_HOLDS)
                .map_or(0.0, |(rate, _)| rate);
            if lost.is_none_or(|l| l <= LOW_LOSS) || self.usage != Usage::Normal {
                self.target = self
                    .target
                    .min((received * ACKED_MARGIN + ACKED_FLOOR).max(probed));
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
        self.probed = None;
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
            r.received += 1;
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
        // A path that loses a few packets anyway (Wi-Fi) still passes: the probe must not
        // lose more than the loss rule tolerates.
        let reported = r.lost + r.received;
        let lossy = f64::from(r.lost) > f64::from(reported) * HIGH_LOSS;
        let ok = !lossy && self.usage != Usage::Over && delivered >= cluster.rate * PROBE_DELIVERED;
        if ok {
            // All of it arrived: the path carries the rate and may carry more, look again
            // soon. Most of it: that is about the path's own rate, which a queue's burst
            // overstates; keep a margin under it and look again later.
            let full = delivered >= cluster.rate * PROBE_FULL;
            let reached = if full {
                delivered.min(cluster.rate)
            } else {
                delivered * PROBE_SHORTFALL
            };
            if reached > self.target {
                self.target = reached.clamp(self.min, self.max);
                if full {
                    // The path carried all of it: no known ceiling below.
                    self.ceiling = None;
                }
                self.last_change = Some(now);
            }
            self.probed = Some((reached, now));
            let again = if full { PROBE_AGAIN } else { PROBE_EVERY };
            self.next_probe_at = Some(now + again);
        } else {
            // Short of its rate, the probe still shows what the path delivers: with no other
            // traffic on it, about its capacity.
            if delivered * PROBE_SHORTFALL > self.target {
                self.target = (delivered * PROBE_SHORTFALL).clamp(self.min, self.max);
                self.ceiling = Some(delivered);
                self.probed = Some((self.target, now));
                self.last_change = Some(now);
            }
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
        if wanted <= self.tested(now) * 1.05 || self.next_probe_at.is_some_and(|at| now < at) {
            return None;
        }
        // Where the path already showed its limit, a smaller step: twice a small link's rate
        // for 300 ms overflows a router's queue, and the probe itself causes the loss.
        let factor = if self.ceiling.is_some() {
            PROBE_FACTOR_NEAR_LIMIT
        } else {
            PROBE_FACTOR
        };
        let rate = wanted.min(self.target * factor).min(self.max);
        // 0 marks packets of no cluster.
        self.next_cluster_id = self.next_cluster_id.checked_add(1).unwrap_or(1);
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

    /// The rate of the probe running now, if one is.
    pub fn probing(&self, now: Instant) -> Option<f64> {
        self.cluster.filter(|c| now < c.until).map(|c| c.rate)
    }

    /// What the path has shown it carries, bits a second: what arrives now, or what a probe
    /// delivered lately; never above the estimate. The estimate may run ahead of it (it grows
    /// with what arrives), but a layer never tried must not go out on that alone.
    pub fn tested(&self, now: Instant) -> f64 {
        let received = self.acked.rate().unwrap_or(0.0);
        let probed = self
            .probed
            .filter(|(_, at)| now.saturating_duration_since(*at) < PROBE_HOLDS)
            .map_or(0.0, |(rate, _)| rate);
        received.max(probed).min(self.target)
    }

    /// Whether the estimate is what a probe delivered in the last [`PROVEN_FOR`].
    pub fn proven(&self, now: Instant) -> bool {
        self.probed.is_some_and(|(rate, at)| {
            now.saturating_duration_since(at) < PROVEN_FOR && self.target <= rate * 1.05
        })
    }

    /// Whether the path has shown congestion (a backoff for delay or loss) yet.
    pub fn has_backed_off(&self) -> bool {
        self.last_decrease.is_some()
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
        run_limited(seconds, demand, demand, capacity)
    }

    /// [`run`] where the sender sends at most `demand` but would send `wanted` (it probes
    /// for it).
    fn run_limited(
        seconds: u64,
        demand: f64,
        wanted: f64,
        capacity: impl Fn(Duration) -> f64,
    ) -> Vec<f64> {
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
            let probe = bwe.probe(wanted, now);
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
        // Up at 25 s: within 10 s it has grown back near the old capacity, and stays around it
        // (delay-based control saws around the capacity: the mean is what is sent).
        assert!(
            samples[34] >= 2_000_000.0 * 0.85,
            "10 s after the step up: {}",
            samples[34]
        );
        let settled = &samples[34..];
        let mean = settled.iter().sum::<f64>() / settled.len() as f64;
        assert!(
            within(mean, 2_000_000.0, 0.15),
            "after the step up, on average: {mean}"
        );
    }

    #[test]
    fn sending_little_does_not_grow_the_estimate_but_a_probe_does_and_it_holds() {
        // 500 kbit/s sent over a 5 Mbit/s path.
        let idle = run_limited(10, 500_000.0, 500_000.0, |_| 5_000_000.0);
        eprintln!("not probing: {idle:?}");
        // (The acknowledged rate reads about 10 % high: each report's packets count as
        // acknowledged when the report arrives.)
        assert!(
            idle.iter()
                .all(|&e| e <= 1.12 * 500_000.0 * ACKED_MARGIN + ACKED_FLOOR),
            "untested growth: {idle:?}"
        );
        // Wanting 1.4 Mbit/s: probes show the path carries it, and the estimate stays there
        // although only 500 kbit/s is sent.
        let probing = run_limited(12, 500_000.0, 1_400_000.0, |_| 5_000_000.0);
        eprintln!("probing for 1.4 Mbit/s: {probing:?}");
        assert!(
            probing[5..].iter().all(|&e| e >= 1_400_000.0 * 0.9),
            "a probe's result holds: {probing:?}"
        );
    }
}
