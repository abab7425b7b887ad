//! What a subscriber counts of each remote track, and the client's API over it: what was
//! received, waiting for it, and asking the server for a keyframe or a retransmission.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::load::client::Client;
use crate::load::error::ClientError;
use crate::load::payload::{read_stamp, unix_micros};
use crate::load::seen::{Seen, SeenCounters};

/// What one subscriber saw of one remote track.
///
/// Everything is counted from the publisher's own per-track counters (in the payload stamps),
/// never from RTP sequence numbers, which the SFU rewrites and keeps contiguous whatever it
/// dropped.
#[derive(Debug, Clone, Default)]
pub struct RemoteTrackStats {
    pub stream_id: String,
    pub track_id: String,
    pub kind: String,
    /// Every packet received, duplicates included.
    pub packets: u64,
    pub bytes: u64,
    /// Distinct publisher counters received.
    pub distinct: u64,
    /// Packets whose counter had been received already.
    pub duplicates: u64,
    /// Packets whose stamp named a publisher other than the stream id.
    pub foreign_packets: u64,
    pub publishers_seen: Vec<String>,
    /// Lowest and highest per-track counters read from the publisher's stamps.
    pub first_counter: Option<u32>,
    pub last_counter: Option<u32>,
    pub first_packet_at: Option<Instant>,
    pub last_packet_at: Option<Instant>,
    /// Gaps between two packets longer than the freeze threshold, and their total length.
    pub freezes: u64,
    pub frozen: Duration,
    pub longest_gap: Duration,
    /// Publisher send to subscriber receive, in microseconds.
    pub latency_us: Option<hdrhistogram::Histogram<u64>>,
    /// RFC 3550 interarrival jitter, in RTP timestamp units.
    pub jitter: f64,
    last_transit: Option<f64>,
    clock_rate: u32,
    pub(crate) freeze_threshold: Duration,
    seen: SeenCounters,
    /// With [`Client::record_arrivals`]: (publisher counter, RTP sequence number) of every
    /// packet, in arrival order.
    pub arrivals: Option<Vec<(u32, u16)>>,
    /// With [`Client::record_arrivals`]: the header extensions (id, value) of the first
    /// packets, with their publisher counter.
    pub extension_samples: Vec<(u32, Vec<(u8, bytes::Bytes)>)>,
}

/// Packets whose header extensions [`Client::record_arrivals`] keeps, per track.
const EXTENSION_SAMPLES: usize = 200;

impl RemoteTrackStats {
    pub(crate) fn new(stream_id: String, track_id: String, kind: String, clock_rate: u32) -> Self {
        // The codec may not be known yet when the track opens: RTP's clock for the kind.
        let clock_rate = match (clock_rate, kind.as_str()) {
            (0, "audio") => 48_000,
            (0, "video") => 90_000,
            (rate, _) => rate,
        };
        RemoteTrackStats {
            stream_id,
            track_id,
            kind,
            clock_rate,
            freeze_threshold: DEFAULT_FREEZE_THRESHOLD,
            latency_us: new_latency_histogram(),
            ..Default::default()
        }
    }

    /// Packets the publisher sent from this subscriber's `start` counter until it had sent
    /// `sent` packets, that never arrived.
    pub fn lost_of(&self, start: u64, sent: u64) -> u64 {
        let expected = sent.saturating_sub(start);
        expected.saturating_sub(self.distinct_from(start))
    }

    /// Distinct counters received at or after `start` (an estimate when `start` is past the
    /// first counter received: everything from the first one on is assumed to count).
    fn distinct_from(&self, start: u64) -> u64 {
        match self.first_counter {
            Some(first) if u64::from(first) < start => {
                self.distinct.saturating_sub(start - u64::from(first))
            }
            _ => self.distinct,
        }
    }

    pub(crate) fn record(&mut self, packet: &rtp::Packet, now: Instant) {
        self.packets += 1;
        self.bytes += packet.payload.len() as u64;
        if let Some(last) = self.last_packet_at {
            let gap = now.saturating_duration_since(last);
            self.longest_gap = self.longest_gap.max(gap);
            if gap > self.freeze_threshold {
                self.freezes += 1;
                self.frozen += gap;
            }
        }
        self.first_packet_at.get_or_insert(now);
        self.last_packet_at = Some(now);
        let Some(stamp) = read_stamp(&packet.payload) else {
            return;
        };
        if let Some(arrivals) = self.arrivals.as_mut() {
            arrivals.push((stamp.counter, packet.header.sequence_number));
            if self.extension_samples.len() < EXTENSION_SAMPLES {
                let extensions = packet
                    .header
                    .extensions
                    .iter()
                    .map(|e| (e.id, e.payload.clone()))
                    .collect();
                self.extension_samples.push((stamp.counter, extensions));
            }
        }
        match self.seen.insert(stamp.counter) {
            Seen::Duplicate => {
                self.duplicates += 1;
                return;
            }
            Seen::New | Seen::OutOfWindow => self.distinct += 1,
        }
        if stamp.publisher_id != self.stream_id {
            self.foreign_packets += 1;
        }
        self.first_counter = Some(
            self.first_counter
                .map_or(stamp.counter, |c| c.min(stamp.counter)),
        );
        self.last_counter = Some(
            self.last_counter
                .map_or(stamp.counter, |c| c.max(stamp.counter)),
        );
        if !self.publishers_seen.contains(&stamp.publisher_id) {
            self.publishers_seen.push(stamp.publisher_id.clone());
        }
        let now_us = unix_micros();
        if let Some(h) = self.latency_us.as_mut() {
            let _ = h.record(now_us.saturating_sub(stamp.sent_at_micros).max(1));
        }
        if self.clock_rate > 0 {
            let arrival = now_us as f64 * f64::from(self.clock_rate) / 1e6;
            let transit = arrival - f64::from(packet.header.timestamp);
            if let Some(last) = self.last_transit {
                let d = (transit - last).abs();
                // Reordered or restarted streams make wild transits: ignore those jumps.
                if d < f64::from(self.clock_rate) {
                    self.jitter += (d - self.jitter) / 16.0;
                }
            }
            self.last_transit = Some(transit);
        }
    }
}

/// No packet on a track for longer than this counts as a freeze, unless told otherwise.
pub const DEFAULT_FREEZE_THRESHOLD: Duration = Duration::from_millis(500);

/// Latencies from 1 µs to 60 s at 3 significant digits: fixed memory however long the run.
pub fn new_latency_histogram() -> Option<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

/// The totals the load tester's progress line shows, without copying any histogram.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveTotals {
    pub packets: u64,
    pub bytes: u64,
}

impl Client {
    /// A copy of what was received so far, per (stream id, track id).
    pub fn received(&self) -> HashMap<(String, String), RemoteTrackStats> {
        self.shared
            .tracks
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Runs `f` on the per-track statistics in place, without copying them.
    pub fn with_received<R>(
        &self,
        f: impl FnOnce(&HashMap<(String, String), RemoteTrackStats>) -> R,
    ) -> Option<R> {
        self.shared.tracks.lock().ok().map(|t| f(&t))
    }

    /// Packets and bytes received on every track, summed without copying the per-track
    /// statistics.
    pub fn received_totals(&self) -> ReceiveTotals {
        let mut totals = ReceiveTotals::default();
        if let Ok(tracks) = self.shared.tracks.lock() {
            for t in tracks.values() {
                totals.packets += t.packets;
                totals.bytes += t.bytes;
            }
        }
        totals
    }

    /// A gap between two packets of a remote track longer than this counts as a freeze
    /// (for tracks that start after the call).
    pub fn set_freeze_threshold(&self, threshold: Duration) {
        self.shared
            .freeze_threshold_us
            .store(threshold.as_micros() as u64, Ordering::Relaxed);
    }

    /// Keeps every packet's counter and sequence number, in arrival order, for tracks that
    /// arrive from now on (tests only: memory grows with the stream).
    pub fn record_arrivals(&self) {
        self.shared.record_arrivals.store(true, Ordering::Relaxed);
    }

    /// Waits until `pred` holds on what was received.
    pub async fn wait_received(
        &self,
        what: &'static str,
        timeout: Duration,
        pred: impl Fn(&HashMap<(String, String), RemoteTrackStats>) -> bool,
    ) -> Result<HashMap<(String, String), RemoteTrackStats>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.shared.tracks.lock().is_ok_and(|t| pred(&t));
            if done {
                return Ok(self.received());
            }
            if Instant::now() > deadline {
                return Err(ClientError::Timeout(what));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a keyframe request (PLI) for one received track, as a decoder that lost its
    /// reference would.
    pub async fn request_keyframe(
        &self,
        stream_id: &str,
        track_id: &str,
    ) -> Result<(), ClientError> {
        self.send_feedback(stream_id, track_id, |media_ssrc| {
            Box::new(
                rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                },
            )
        })
        .await
    }

    /// Asks for one packet again (a NACK), as a receiver that lost it would.
    pub async fn request_retransmission(
        &self,
        stream_id: &str,
        track_id: &str,
        sequence_number: u16,
    ) -> Result<(), ClientError> {
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
        self.send_feedback(stream_id, track_id, |media_ssrc| {
            Box::new(TransportLayerNack {
                sender_ssrc: 0,
                media_ssrc,
                nacks: vec![NackPair {
                    packet_id: sequence_number,
                    lost_packets: 0,
                }],
            })
        })
        .await
    }

    async fn send_feedback(
        &self,
        stream_id: &str,
        track_id: &str,
        make: impl FnOnce(u32) -> Box<dyn rtc::rtcp::Packet>,
    ) -> Result<(), ClientError> {
        let track = self
            .shared
            .remotes
            .lock()
            .ok()
            .and_then(|r| {
                r.get(&(stream_id.to_string(), track_id.to_string()))
                    .cloned()
            })
            .ok_or(ClientError::Rtc(format!(
                "no received track {stream_id} {track_id}"
            )))?;
        let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
        track
            .write_rtcp(vec![make(media_ssrc)])
            .await
            .map_err(|e| ClientError::Rtc(e.to_string()))
    }
}
