//! Each subscriber's share of its downlink, as the worker runs it: feedback into the
//! subscriber connection's estimate ([`Congestion`]), every `LAYERS_EVERY` the layers of its
//! tracks chosen within the estimate ([`Router::allocate_within`]), and, when it would take
//! more than the estimate allows, a probe: padding on one of its video streams up to the
//! probe's rate, in steps of [`PADDING_EVERY`], while the feedback tells whether it arrived.
//!
//! [`Congestion`]: crate::engine::congestion::Congestion
//! [`Router::allocate_within`]: crate::engine::router::Router::allocate_within

use std::time::Instant;

use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use tracing::debug;

use crate::engine::congestion::PADDING_EVERY;
use crate::engine::transmit::Transmit;
use crate::engine::worker::{TimerKey, Worker};
use crate::engine::EngineEvent;
use crate::metrics::Metrics;

impl Worker {
    /// Bandwidth feedback on subscriber connection `peer`.
    pub(super) fn on_bandwidth_feedback(
        &mut self,
        peer: usize,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let Some(c) = self.peers.get_mut(peer).and_then(|p| p.congestion.as_mut()) else {
            return;
        };
        for packet in packets {
            let any = packet.as_any();
            if let Some(feedback) = any.downcast_ref::<TransportLayerCc>() {
                Metrics::add(&self.metrics.twcc_feedback, 1);
                c.on_twcc(feedback, now);
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                Metrics::add(&self.metrics.remb_received, 1);
                c.on_remb(f64::from(remb.bitrate));
            }
        }
    }

    /// Every subscriber's layers within its estimate; a probe where it wants more.
    pub(super) fn allocate_bandwidth(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.layers_measured_at);
        self.layers_measured_at = now;
        self.router.measure_layers(elapsed);
        let mut keyframes = Vec::new();
        let mut paused = Vec::new();
        let mut probes = Vec::new();
        for (key, m) in self.participants.iter() {
            let Some(c) = self
                .peers
                .get_mut(m.subscriber)
                .and_then(|p| p.congestion.as_mut())
            else {
                continue;
            };
            let dks: Vec<usize> = m.downtracks_by_ssrc.values().copied().collect();
            let repair = c.retransmission_rate(elapsed);
            let Some(budget) = c.budget() else {
                continue;
            };
            // Repair comes first: it is what the subscriber's decoder waits for.
            let budget = (budget - repair).max(0.0);
            if tracing::enabled!(tracing::Level::TRACE) {
                let rates: Vec<Vec<Option<f64>>> = dks
                    .iter()
                    .filter_map(|&dk| self.router.downtrack(dk))
                    .filter_map(|d| self.router.receiver(d.receiver))
                    .map(|r| r.layer_rates())
                    .collect();
                let ceilings: Vec<_> = dks
                    .iter()
                    .filter_map(|&dk| self.router.downtrack(dk).map(|d| d.ceiling))
                    .collect();
                tracing::trace!(participant = %m.id, budget, repair, ?rates, ?ceilings, "estimate");
            }
            let tested = c.tested(now).map_or(budget, |t| (t - repair).max(0.0));
            let allocation = self
                .router
                .allocate_within(&dks, budget, tested, c.proven(now), now);
            if !allocation.keyframes.is_empty() {
                debug!(participant = %m.id, budget, wanted = allocation.wanted, "layers within the estimate");
            }
            if c.start_probe(allocation.wanted, now) {
                debug!(participant = %m.id, budget, wanted = allocation.wanted, "probing");
                probes.push(m.subscriber);
            }
            keyframes.extend(allocation.keyframes);
            paused.extend(allocation.paused_changed.into_iter().map(|p| (key, p)));
        }
        Metrics::add(&self.metrics.layer_switches, keyframes.len() as u64);
        for (rk, layer) in keyframes {
            self.request_keyframes(rk, 1 << layer.min(7), now, true);
        }
        for peer in probes {
            self.timers.set(TimerKey::Probe(peer), Some(now));
        }
        // Dynacast: layers nobody needs are paused at the publisher.
        for (rk, active) in self.router.layers_to_ask(now) {
            let Some(r) = self.router.receiver(rk) else {
                continue;
            };
            let (publisher, track_id) = (r.publisher, r.meta.track_id.clone());
            debug!(track = %track_id, ?active, "layers asked of the publisher");
            self.emit(publisher, EngineEvent::Layers { track_id, active });
        }
        for (subscriber, (dk, is_paused)) in paused {
            if is_paused {
                Metrics::add(&self.metrics.tracks_paused_bandwidth, 1);
            }
            let Some(r) = self
                .router
                .downtrack(dk)
                .and_then(|d| self.router.receiver(d.receiver))
            else {
                continue;
            };
            let event = EngineEvent::TrackPaused {
                publisher_id: r.meta.publisher_id.clone(),
                track_id: r.meta.track_id.clone(),
                paused: is_paused,
            };
            self.emit(subscriber, event);
        }
    }

    /// One step of a probe on subscriber connection `peer`: the padding due now.
    pub(super) fn probe_step(&mut self, peer: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let owner = p.owner;
        let Some(due) = p.congestion.as_mut().and_then(|c| c.padding_due(now)) else {
            return;
        };
        if due > 0 {
            let dks: Vec<usize> = self
                .participants
                .get(owner)
                .map(|m| m.downtracks_by_ssrc.values().copied().collect())
                .unwrap_or_default();
            let mut out = Transmit {
                peers: &mut self.peers,
                udp: &mut self.udp,
                fault: &mut self.send_fault,
                metrics: &self.metrics,
            };
            self.router.pad(&dks, due, now, &mut out);
        }
        self.timers
            .set(TimerKey::Probe(peer), Some(now + PADDING_EVERY));
    }
}
