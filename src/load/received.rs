//! What a subscriber counts of each remote track, and the client's API over it: what was
//! received (simulcast layer by layer, and second by second), waiting for it, and asking the
//! server for a keyframe or a retransmission.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::load::client::Client;
use crate::load::error::ClientError;
use crate::load::payload::{read_stamp, unix_micros, Vp8Info};
use crate::load::seen::{Seen, SeenCounters};

/// What one subscriber saw of one remote track.
///
/// Everything is counted from the publisher's own per-stream counters (in the payload stamps),
/// never from RTP sequence numbers, which the SFU rewrites and keeps contiguous whatever it
/// dropped. A simulcast track has one counter per layer, and the subscriber receives one layer
/// at a time: what it got is kept as [`LayerRun`]s, and only gaps inside a run are loss.
#[derive(Debug, Clone, Default)]
pub struct RemoteTrackStats {
    pub stream_id: String,
    pub track_id: String,
    pub kind: String,
    /// Every packet received, duplicates included.
    pub packets: u64,
    pub bytes: u64,
    /// Distinct publisher counters received (of every layer).
    pub distinct: u64,
    /// Packets whose counter had been received already.
    pub duplicates: u64,
    /// Packets whose stamp named a publisher other than the stream id.
    pub foreign_packets: u64,
    pub publishers_seen: Vec<String>,
    /// Lowest and highest per-track counters read from the publisher's stamps (not simulcast).
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
    /// Where the lowest and highest counters received sit (see `seen.rs`; not simulcast).
    lowest_place: Option<u64>,
    highest_place: Option<u64>,
    /// Simulcast: which of each layer's counters were received.
    layer_seen: Vec<SeenCounters>,
    /// Simulcast: every contiguous run of one layer received, in the server's order.
    pub runs: Vec<LayerRun>,
    /// The highest RTP sequence number received, extended past wraps.
    highest_seq: Option<u64>,
    /// Packets that arrived newest but not next in the subscriber's sequence numbers: the
    /// server's numbering skipped (or the network lost) packets before them.
    pub sequence_gaps: u64,
    /// VP8 frames arriving in order whose picture id does not follow the previous frame's.
    pub picture_id_jumps: u64,
    last_picture_id: Option<u16>,
    /// Closed seconds of the track (see [`Second`]), and the one under way.
    seconds: Vec<Second>,
    current: Option<Second>,
    /// Counters missing when the last second closed.
    missing_at_close: u64,
    /// With [`Client::record_arrivals`]: (publisher counter, RTP sequence number) of every
    /// packet, in arrival order.
    pub arrivals: Option<Vec<(u32, u16)>>,
    /// With [`Client::record_arrivals`]: the header extensions (id, value) of the first
    /// packets, with their publisher counter.
    pub extension_samples: Vec<(u32, Vec<(u8, bytes::Bytes)>)>,
}

/// One contiguous run of a simulcast layer as a subscriber received it: from the first packet
/// of the layer it got to the last it got before the server switched it away (or to the end).
/// The counters between are expected; the ones that did not come are lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRun {
    pub layer: u8,
    /// The places (see `seen.rs`) of the lowest and highest counters of the run.
    pub first: u64,
    pub last: u64,
    /// Distinct counters received in the run.
    pub received: u64,
    /// The extended subscriber-side sequence numbers it spans: the order the server sent in.
    first_seq: u64,
    last_seq: u64,
    pub started_at: Instant,
    pub last_at: Instant,
}

impl LayerRun {
    fn new(layer: u8, place: u64, seq: u64, now: Instant) -> Self {
        LayerRun {
            layer,
            first: place,
            last: place,
            received: 1,
            first_seq: seq,
            last_seq: seq,
            started_at: now,
            last_at: now,
        }
    }

    fn add(&mut self, place: u64, seq: u64, now: Instant) {
        self.first = self.first.min(place);
        self.last = self.last.max(place);
        self.received += 1;
        self.first_seq = self.first_seq.min(seq);
        self.last_seq = self.last_seq.max(seq);
        self.last_at = self.last_at.max(now);
    }

    /// Counters from the first to the last of the run.
    pub fn span(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Counters inside the run that never arrived.
    pub fn lost(&self) -> u64 {
        self.span().saturating_sub(self.received)
    }

    pub fn first_counter(&self) -> u32 {
        self.first as u32
    }

    /// The subscriber-side sequence numbers of the run (extended past wraps), first and last:
    /// one run ends where the next begins when the server's numbering runs on unbroken.
    pub fn sequences(&self) -> (u64, u64) {
        (self.first_seq, self.last_seq)
    }

    pub fn last_counter(&self) -> u32 {
        self.last as u32
    }
}

/// One second of a track as received: what the timeline of the report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Second {
    /// When the second began.
    pub at: Instant,
    /// How long it is: a second, but for the one under way (to the last packet so far).
    pub length: Duration,
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Counters that went missing during the second, net of those repaired in it.
    pub lost: u64,
    /// Freezes that ended in the second.
    pub freezes: u32,
    /// The simulcast layer of the last packet of the second.
    pub layer: Option<u8>,
    pub latency_sum_us: u64,
    pub latency_samples: u32,
    pub latency_max_us: u64,
}

impl Second {
    fn starting(at: Instant) -> Self {
        Second {
            at,
            length: Duration::from_secs(1),
            packets: 0,
            bytes: 0,
            lost: 0,
            freezes: 0,
            layer: None,
            latency_sum_us: 0,
            latency_samples: 0,
            latency_max_us: 0,
        }
    }
}

/// Packets whose header extensions [`Client::record_arrivals`] keeps, per track.
const EXTENSION_SAMPLES: usize = 200;

/// The simulcast layers a stamp may name.
const LAYERS: usize = 3;

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

    /// True once a packet of a simulcast layer arrived.
    pub fn is_simulcast(&self) -> bool {
        !self.runs.is_empty()
    }

    /// The simulcast layer received now (of the newest run).
    pub fn layer(&self) -> Option<u8> {
        self.runs.last().map(|r| r.layer)
    }

    /// Simulcast: packets expected and lost, run by run. The last run goes on to the last
    /// packet its layer's publisher sent (`sent[layer]` packets in all), as a track that is
    /// not simulcast is expected to the end.
    pub fn simulcast_loss(&self, sent: &[u64; LAYERS]) -> (u64, u64) {
        let (mut expected, mut received) = (0, 0);
        for (i, run) in self.runs.iter().enumerate() {
            let mut last = run.last;
            let layer = usize::from(run.layer).min(LAYERS - 1);
            if let (true, Some(seen)) = (i + 1 == self.runs.len(), self.layer_seen.get(layer)) {
                if sent[layer] > 0 {
                    last = last.max(seen.place_of((sent[layer] - 1) as u32));
                }
            }
            expected += last - run.first + 1;
            received += run.received;
        }
        (expected, expected.saturating_sub(received))
    }

    /// How long the subscriber was on each layer: each run until the next began (the last
    /// until the last packet).
    pub fn layer_time(&self) -> [Duration; LAYERS] {
        let mut time = [Duration::ZERO; LAYERS];
        for (i, run) in self.runs.iter().enumerate() {
            let end = self
                .runs
                .get(i + 1)
                .map(|next| next.started_at)
                .or(self.last_packet_at)
                .unwrap_or(run.last_at);
            time[usize::from(run.layer).min(LAYERS - 1)] +=
                end.saturating_duration_since(run.started_at);
        }
        time
    }

    /// Counters missing so far: between the first and last received (not simulcast), or
    /// inside the runs.
    fn missing(&self) -> u64 {
        if self.is_simulcast() {
            return self.runs.iter().map(LayerRun::lost).sum();
        }
        match (self.lowest_place, self.highest_place) {
            (Some(low), Some(high)) => (high - low + 1).saturating_sub(self.distinct),
            _ => 0,
        }
    }

    /// The track second by second, the one under way included.
    pub fn timeline(&self) -> Vec<Second> {
        let mut seconds = self.seconds.clone();
        if let Some(mut current) = self.current {
            current.lost = self.missing().saturating_sub(self.missing_at_close);
            current.length = self.last_packet_at.map_or(Duration::ZERO, |last| {
                last.saturating_duration_since(current.at)
            });
            seconds.push(current);
        }
        seconds
    }

    /// Closes the seconds that ended before `now` (empty ones during a gap too).
    fn roll_seconds(&mut self, now: Instant) {
        let Some(current) = self.current else {
            self.current = Some(Second::starting(now));
            return;
        };
        if now < current.at + Duration::from_secs(1) {
            return;
        }
        let missing = self.missing();
        let mut closing = current;
        closing.lost = missing.saturating_sub(self.missing_at_close);
        self.missing_at_close = missing;
        loop {
            let next = closing.at + Duration::from_secs(1);
            self.seconds.push(closing);
            closing = Second::starting(next);
            if now < next + Duration::from_secs(1) {
                break;
            }
        }
        self.current = Some(closing);
    }

    /// Places a sequence number on a line that does not wrap, next to the highest seen.
    fn extend_sequence(&mut self, seq: u16) -> u64 {
        let place = match self.highest_seq {
            None => (1 << 16) + u64::from(seq),
            Some(top) => {
                let low = top as u16;
                let ahead = seq.wrapping_sub(low);
                if ahead < 0x8000 {
                    top + u64::from(ahead)
                } else {
                    top.saturating_sub(u64::from(low.wrapping_sub(seq)))
                }
            }
        };
        self.highest_seq = Some(self.highest_seq.map_or(place, |top| top.max(place)));
        place
    }

    pub(crate) fn record(&mut self, packet: &rtp::Packet, now: Instant) {
        self.roll_seconds(now);
        self.packets += 1;
        self.bytes += packet.payload.len() as u64;
        let mut froze = false;
        if let Some(last) = self.last_packet_at {
            let gap = now.saturating_duration_since(last);
            self.longest_gap = self.longest_gap.max(gap);
            if gap > self.freeze_threshold {
                self.freezes += 1;
                self.frozen += gap;
                froze = true;
            }
        }
        if let Some(second) = self.current.as_mut() {
            second.packets += 1;
            second.bytes += packet.payload.len() as u64;
            second.freezes += u32::from(froze);
        }
        self.first_packet_at.get_or_insert(now);
        self.last_packet_at = Some(now);
        let previous_top = self.highest_seq;
        let seq = self.extend_sequence(packet.header.sequence_number);
        let in_order = previous_top.is_none_or(|top| seq > top);
        if previous_top.is_some_and(|top| seq > top + 1) {
            self.sequence_gaps += 1;
        }
        if in_order && self.kind == "video" {
            self.check_picture_id(&packet.payload);
        }
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
        let new = match stamp.layer {
            None => self.count_counter(stamp.counter),
            Some(layer) => self.count_layer_counter(layer, stamp.counter, seq, now),
        };
        if !new {
            self.duplicates += 1;
            return;
        }
        self.distinct += 1;
        if let (Some(second), Some(layer)) = (self.current.as_mut(), stamp.layer) {
            second.layer = Some(layer);
        }
        if stamp.publisher_id != self.stream_id {
            self.foreign_packets += 1;
        }
        if !self.publishers_seen.contains(&stamp.publisher_id) {
            self.publishers_seen.push(stamp.publisher_id.clone());
        }
        let now_us = unix_micros();
        let latency = now_us.saturating_sub(stamp.sent_at_micros).max(1);
        if let Some(h) = self.latency_us.as_mut() {
            let _ = h.record(latency);
        }
        if let Some(second) = self.current.as_mut() {
            second.latency_sum_us += latency;
            second.latency_samples += 1;
            second.latency_max_us = second.latency_max_us.max(latency);
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

    /// A counter of a stream that is not simulcast: true if it is new.
    fn count_counter(&mut self, counter: u32) -> bool {
        let place = self.seen.place_of(counter);
        if self.seen.insert(counter) == Seen::Duplicate {
            return false;
        }
        self.lowest_place = Some(self.lowest_place.map_or(place, |p| p.min(place)));
        self.highest_place = Some(self.highest_place.map_or(place, |p| p.max(place)));
        self.first_counter = Some(self.first_counter.map_or(counter, |c| c.min(counter)));
        self.last_counter = Some(self.last_counter.map_or(counter, |c| c.max(counter)));
        true
    }

    /// A counter of simulcast layer `layer` that came with sequence number `seq` (extended):
    /// true if it is new. A packet newer than everything received continues the newest run if
    /// it is of the same layer, else starts a run (the server switched); an older one (a
    /// retransmission, say) belongs to the run the server sent it in.
    fn count_layer_counter(&mut self, layer: u8, counter: u32, seq: u64, now: Instant) -> bool {
        if self.layer_seen.is_empty() {
            self.layer_seen = vec![SeenCounters::default(); LAYERS];
        }
        let layer = layer.min(LAYERS as u8 - 1);
        let seen = &mut self.layer_seen[usize::from(layer)];
        let place = seen.place_of(counter);
        if seen.insert(counter) == Seen::Duplicate {
            return false;
        }
        let newest = self.runs.last().is_none_or(|r| seq > r.last_seq);
        if newest {
            match self.runs.last_mut() {
                Some(run) if run.layer == layer => run.add(place, seq, now),
                _ => self.runs.push(LayerRun::new(layer, place, seq, now)),
            }
            return true;
        }
        let at = self
            .runs
            .iter()
            .rposition(|r| r.first_seq <= seq)
            .unwrap_or(0);
        let run = if self.runs[at].layer == layer {
            Some(&mut self.runs[at])
        } else {
            self.runs.iter_mut().rev().find(|r| r.layer == layer)
        };
        match run {
            Some(run) => run.add(place, seq, now),
            None => self.runs.insert(at, LayerRun::new(layer, place, seq, now)),
        }
        true
    }

    /// Counts a VP8 frame whose picture id does not follow the previous frame's.
    fn check_picture_id(&mut self, payload: &[u8]) {
        let Some(id) = Vp8Info::parse(payload)
            .filter(|i| i.start_of_frame)
            .and_then(|i| i.picture_id)
        else {
            return;
        };
        if let Some(last) = self.last_picture_id {
            if id != (last + 1) & 0x7fff {
                self.picture_id_jumps += 1;
            }
        }
        self.last_picture_id = Some(id);
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

    /// Waits until the video track from `stream_id` arrives in simulcast layer `layer` (read
    /// from the stamps), and returns what was received of it then.
    pub async fn wait_layer(
        &self,
        stream_id: &str,
        layer: u8,
        timeout: Duration,
    ) -> Result<RemoteTrackStats, ClientError> {
        let video = |r: &HashMap<(String, String), RemoteTrackStats>| {
            r.values()
                .find(|t| t.stream_id == stream_id && t.kind == "video")
                .cloned()
        };
        let received = self
            .wait_received("a simulcast layer", timeout, |r| {
                video(r).is_some_and(|t| t.layer() == Some(layer))
            })
            .await?;
        video(&received).ok_or(ClientError::Timeout("a simulcast layer"))
    }

    /// The simulcast layer the video track from `stream_id` arrives in now.
    pub fn layer_of(&self, stream_id: &str) -> Option<u8> {
        self.with_received(|r| {
            r.values()
                .find(|t| t.stream_id == stream_id && t.kind == "video")
                .and_then(RemoteTrackStats::layer)
        })
        .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::payload::{vp8_prefix_with, write_stamp, Stamp};

    /// A subscriber's view of one track, fed packet by packet.
    struct Feed {
        stats: RemoteTrackStats,
        t0: Instant,
    }

    impl Feed {
        fn new() -> Self {
            Feed {
                stats: RemoteTrackStats::new("p".into(), "p-video".into(), "video".into(), 0),
                t0: Instant::now(),
            }
        }

        /// A packet of `layer` with its counter, arriving with subscriber sequence `seq` at
        /// `ms` into the run.
        fn packet(&mut self, layer: Option<u8>, counter: u32, seq: u16, ms: u64, key: bool) {
            let mut payload = Vec::new();
            vp8_prefix_with(
                &mut payload,
                true,
                key,
                Some(seq & 0x7fff),
                Some((320, 180)),
            );
            let stamp = Stamp {
                sent_at_micros: unix_micros(),
                publisher_id: "p".into(),
                counter,
                layer,
            };
            write_stamp(&mut payload, &stamp, 100);
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    sequence_number: seq,
                    ..Default::default()
                },
                payload: bytes::Bytes::from(payload),
            };
            self.stats
                .record(&packet, self.t0 + Duration::from_millis(ms));
        }
    }

    #[test]
    fn a_switch_starts_a_run_and_only_gaps_inside_runs_are_lost() {
        let mut f = Feed::new();
        // Layer 2, counters 1000..1100, one lost (1050).
        let mut seq = 7u16;
        for c in 1000..1100u32 {
            if c != 1050 {
                f.packet(Some(2), c, seq, u64::from(c - 1000) * 10, c == 1000);
            }
            seq += 1;
        }
        // The server switches to layer 0 on its keyframe, at layer 0's counter 300.
        for c in 300..400u32 {
            f.packet(Some(0), c, seq, 1000 + u64::from(c - 300) * 10, c == 300);
            seq += 1;
        }
        let s = &f.stats;
        assert_eq!(s.runs.len(), 2);
        assert_eq!(s.layer(), Some(0));
        assert_eq!(
            (
                s.runs[0].layer,
                s.runs[0].first_counter(),
                s.runs[0].last_counter()
            ),
            (2, 1000, 1099)
        );
        assert_eq!((s.runs[0].span(), s.runs[0].lost()), (100, 1));
        assert_eq!((s.runs[1].layer, s.runs[1].lost()), (0, 0));
        // The publisher sent layer 0 up to counter 419 when it stopped: the last run goes on
        // to there. Layer 1, never received, and layer 2 after the switch are not lost.
        assert_eq!(s.simulcast_loss(&[420, 5000, 5000]), (100 + 120, 1 + 20));
        assert_eq!(s.distinct, 199);
        assert_eq!(s.sequence_gaps, 1, "the server's numbering skipped one");
        let time = s.layer_time();
        assert_eq!(time[2], Duration::from_millis(1000));
        assert_eq!(time[0], Duration::from_millis(990));
        assert_eq!(time[1], Duration::ZERO);
        assert!(
            s.first_counter.is_none(),
            "no track-wide counter with simulcast"
        );
    }

    #[test]
    fn a_retransmission_after_a_switch_repairs_the_old_run() {
        let mut f = Feed::new();
        for (i, c) in (0..50u32).enumerate() {
            if c != 49 {
                f.packet(Some(1), c, 100 + i as u16, i as u64, c == 0);
            }
        }
        for (i, c) in (900..950u32).enumerate() {
            f.packet(Some(2), c, 150 + i as u16, 50 + i as u64, c == 900);
        }
        assert_eq!(f.stats.runs[0].last_counter(), 48);
        // The last packet of layer 1 comes again, late, with its own sequence number.
        f.packet(Some(1), 49, 149, 120, false);
        // And a duplicate of it.
        f.packet(Some(1), 49, 149, 121, false);
        let s = &f.stats;
        assert_eq!(s.runs.len(), 2, "a late packet is no switch");
        assert_eq!((s.runs[0].last_counter(), s.runs[0].lost()), (49, 0));
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.layer(), Some(2));
        assert_eq!(s.simulcast_loss(&[0, 50, 950]), (100, 0));
    }

    #[test]
    fn switching_back_to_a_layer_does_not_count_what_was_skipped() {
        let mut f = Feed::new();
        let mut seq = u16::MAX - 20;
        let mut ms = 0;
        for (layer, counters) in [(2u8, 0..30u32), (0, 10..40), (2, 200..230)] {
            for c in counters.clone() {
                f.packet(Some(layer), c, seq, ms, c == counters.start);
                seq = seq.wrapping_add(1);
                ms += 10;
            }
        }
        let s = &f.stats;
        let layers: Vec<u8> = s.runs.iter().map(|r| r.layer).collect();
        assert_eq!(layers, [2, 0, 2]);
        assert_eq!(s.simulcast_loss(&[40, 0, 230]), (90, 0));
        assert_eq!(s.sequence_gaps, 0, "continuous across the sequence wrap");
        assert_eq!(s.picture_id_jumps, 0);
        assert_eq!(s.layer_time()[2], Duration::from_millis(590));
    }

    #[test]
    fn layer_counters_wrap_around_u32() {
        let mut f = Feed::new();
        let mut c = u32::MAX - 9;
        for i in 0..20u16 {
            if i != 15 {
                f.packet(Some(0), c, i, u64::from(i), i == 0);
            }
            c = c.wrapping_add(1);
        }
        let s = &f.stats;
        assert_eq!(s.runs.len(), 1);
        assert_eq!((s.runs[0].span(), s.runs[0].lost()), (20, 1));
        assert_eq!(
            (s.runs[0].first_counter(), s.runs[0].last_counter()),
            (u32::MAX - 9, 9)
        );
        // The publisher's last counter is past the wrap too: 10 + 2^32 packets in all.
        assert_eq!(s.simulcast_loss(&[(1 << 32) + 12, 0, 0]), (22, 3));
    }

    #[test]
    fn a_stream_without_layers_is_counted_as_before() {
        let mut f = Feed::new();
        for c in 10..110u32 {
            if c % 10 != 0 {
                f.packet(None, c, c as u16, u64::from(c), false);
            }
        }
        let s = &f.stats;
        assert!(!s.is_simulcast() && s.runs.is_empty());
        assert_eq!((s.first_counter, s.last_counter), (Some(11), Some(109)));
        assert_eq!(s.distinct, 90);
        assert_eq!(s.lost_of(11, 110), 99 - 90);
        assert_eq!(s.layer(), None);
    }

    #[test]
    fn the_timeline_has_a_second_for_every_second_gaps_included() {
        let mut f = Feed::new();
        f.stats.freeze_threshold = Duration::from_millis(500);
        // 100 packets a second for two seconds, nothing for two, then one more second.
        let times = (0..2000).step_by(10).chain((4000..5000).step_by(10));
        for (c, ms) in (0u32..).zip(times) {
            if c != 150 {
                f.packet(Some(1), c, c as u16, ms, c == 0);
            }
        }
        let t = f.stats.timeline();
        assert_eq!(t.len(), 5, "{t:?}");
        assert_eq!(
            t.iter().map(|s| s.packets).collect::<Vec<_>>(),
            [100, 99, 0, 0, 100]
        );
        assert_eq!(
            t.iter().map(|s| s.lost).collect::<Vec<_>>(),
            [0, 1, 0, 0, 0]
        );
        assert_eq!(
            t.iter().map(|s| s.freezes).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1]
        );
        assert_eq!(t[0].layer, Some(1));
        assert_eq!(t[2].layer, None);
        // A 7-byte descriptor and frame tag before each 100-byte stamp, and the keyframe's
        // start code and size (7 bytes) on the first.
        assert_eq!(t[0].bytes, 100 * 107 + 7);
        assert!(t[0].latency_samples == 100 && t[0].latency_max_us > 0);
        assert_eq!(t[4].at.duration_since(t[0].at), Duration::from_secs(4));
        assert_eq!(t[0].length, Duration::from_secs(1));
        assert_eq!(
            t[4].length,
            Duration::from_millis(990),
            "under way: to the last packet"
        );
    }
}
