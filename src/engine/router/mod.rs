//! The Router: a worker's published tracks, their Receivers (one per simulcast layer) and
//! DownTracks, and the fan-out between them.
//!
//! A publisher packet goes to the Receiver of its layer, then to every DownTrack of the track in
//! a plain loop (each takes the packets of the one layer it forwards); each DownTrack writes its subscriber's packet into a buffer from the [`MediaOut`] and
//! hands it back to be sent. No lock, no channel hop, no allocation per subscriber: the buffers
//! are recycled by the `MediaOut`. NACKs are answered from one history per published track.
//! Nothing here knows sockets, keys or peer connections: the worker's `MediaOut` does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use slab::Slab;

use crate::engine::negotiation::TrackKey;
use crate::media::allocator::{self, Demand, Hysteresis, LayerInfo, View};
use crate::media::downtrack::{DownTrack, Dropped, Outcome, QueueLimits, Shape};
use crate::media::extensions;
use crate::media::forwarder::Refused;
use crate::media::history::PacketHistory;
use crate::media::quality::StreamLoss;
use crate::media::receiver::{KeyframeRequest, Receiver, TrackMeta};
use crate::media::speech::SpeechMeter;
use crate::media::vp8;
use crate::metrics::{self, Metrics};

use crate::ratelimit::TokenBucket;

mod layers;

pub use layers::{SubscriberKeyframe, KEYFRAME_REQUEST_AGAIN};

/// A layer with no packet for this long is not arriving.
const LAYER_IDLE: Duration = Duration::from_millis(600);

/// Most sequence numbers answered from one NACK packet: a forged one may name thousands.
const MAX_RETRANSMITS_PER_NACK: usize = 256;

/// Where forwarded packets go: the worker protects each for its peer connection and queues it
/// for the socket; a test records them.
pub trait MediaOut {
    /// An empty buffer to write one packet into.
    fn buffer(&mut self) -> BytesMut;
    /// Takes back a buffer that was not sent.
    fn give_back(&mut self, buf: BytesMut);
    /// Sends `packet` (plain RTP, laid out as `shape` says) on peer connection `peer`; false
    /// if it could not go.
    fn send(&mut self, peer: usize, packet: BytesMut, shape: Shape, now: Instant) -> bool;
    /// Whether peer `peer`'s link has room for a retransmission of `len` bytes now.
    fn may_retransmit(&mut self, _peer: usize, _len: usize, _now: Instant) -> bool {
        true
    }
}

/// The limits the Router works within.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub pli_interval: Duration,
    /// Video packets kept per published track to answer NACKs, and noted per DownTrack.
    pub nack_window: u16,
    pub nack_max_age: Duration,
    pub max_retransmits_per_sec: u32,
    pub queue: QueueLimits,
    /// Test-only fault injection: every Receiver drops every Nth packet.
    pub fault_drop_every: Option<u32>,
}

/// One published track: what it is, its layers, the DownTracks of it.
pub struct ReceiverEntry {
    pub meta: TrackMeta,
    /// The publisher (the worker's key for it).
    pub publisher: usize,
    /// Its streams by simulcast layer, lowest first (one, layer 0, for a track that is not
    /// simulcast).
    layers: Vec<Option<Layer>>,
    downtracks: Vec<usize>,
    /// When its last packet arrived, on any layer: a publisher whose tracks all fall silent is
    /// a ghost.
    pub last_packet: Instant,
    /// Its publisher muted it: silence is expected.
    pub muted: bool,
    /// A layer's size changed since the DownTracks' layers were last chosen.
    resized: bool,
    vp8: bool,
    /// Audio: how loud its publisher speaks.
    pub speech: SpeechMeter,
    /// The simulcast layers its publisher was last asked to send (their rids), and since when
    /// fewer would do.
    pub layers_asked: Option<Vec<String>>,
    fewer_since: Option<Instant>,
}

/// One stream of a track.
pub struct Layer {
    pub receiver: Receiver,
    /// When its last packet arrived: a layer the publisher stopped sending (its encoder cut
    /// it for CPU or bandwidth, or `layers` paused it) is not forwarded.
    last_packet: Instant,
    active: bool,
    /// Video: the stream's recent packets, for every subscriber's retransmissions.
    history: Option<PacketHistory>,
    pub info: LayerInfo,
    /// The publisher's name for it (RID-based simulcast).
    pub rid: Option<String>,
    /// Bytes that arrived since the last [`Router::measure_layers`], and the bitrate, bits a
    /// second, smoothed over about a second.
    bytes: u64,
    pub bitrate: f64,
    /// What the publisher's uplink lost of it (after repair), for its connection quality.
    loss: StreamLoss,
}

/// How long fewer simulcast layers must have done before the publisher is asked to stop the
/// others.
const LAYERS_OFF_AFTER: Duration = Duration::from_secs(3);

/// What a forwarded packet weighs beyond its payload (RTP header and extensions, SRTP tag),
/// in the same measure as the bandwidth estimate's.
const PACKET_OVERHEAD: u64 = 40;
/// The weight of each new measurement of a layer's bitrate (every `LAYERS_EVERY`).
const BITRATE_SMOOTHING: f64 = 0.25;

impl ReceiverEntry {
    pub fn layer(&self, layer: u8) -> Option<&Layer> {
        self.layers.get(usize::from(layer)).and_then(Option::as_ref)
    }

    pub fn layer_mut(&mut self, layer: u8) -> Option<&mut Layer> {
        self.layers
            .get_mut(usize::from(layer))
            .and_then(Option::as_mut)
    }

    /// How many layers it has had (the highest index seen, plus one).
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// What each layer is, lowest first (`None` for one that is not arriving). When none is
    /// arriving (the publisher stopped, or muted its camera), every layer it had counts: what
    /// resumes first is not known.
    pub fn layer_infos(&self) -> Vec<Option<LayerInfo>> {
        let arriving = |l: &&Layer| l.active;
        let any = self.layers.iter().flatten().any(|l| arriving(&l));
        self.layers
            .iter()
            .map(|l| l.as_ref().filter(|l| !any || arriving(l)).map(|l| l.info))
            .collect()
    }

    /// Each layer's bitrate, lowest first (`None`: not arriving).
    pub fn layer_rates(&self) -> Vec<Option<f64>> {
        self.layers
            .iter()
            .map(|l| l.as_ref().filter(|l| l.active).map(|l| l.bitrate))
            .collect()
    }

    /// A screen share is served before cameras (the web client's track ids say which is
    /// which; see `docs/protocol.md`).
    fn priority(&self) -> u8 {
        u8::from(!self.meta.track_id.starts_with("screen"))
    }

    /// Marks each layer arriving or not as of `now`; true when that changed for any.
    fn refresh_activity(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for layer in self.layers.iter_mut().flatten() {
            let active = now.saturating_duration_since(layer.last_packet) < LAYER_IDLE;
            changed |= active != layer.active;
            layer.active = active;
        }
        changed
    }

    pub fn is_video(&self) -> bool {
        self.meta.kind == crate::media::kind::TrackKind::Video
    }
}

pub struct DownTrackEntry {
    pub downtrack: DownTrack,
    /// What its subscriber's NACKs may still cost (see `--max-retransmits-per-sec`).
    retransmit_budget: TokenBucket,
    /// The subscriber (the worker's key for it) and the peer connection it sends on.
    pub subscriber: usize,
    pub peer: usize,
    pub receiver: usize,
    /// How its subscriber shows the track.
    pub view: View,
    /// The highest layer its subscriber's bandwidth allows (`None` inside: none, paused);
    /// `None`: no estimate, only the view limits it.
    pub ceiling: Option<Option<u8>>,
    hysteresis: Hysteresis,
    /// When its subscriber's last keyframe request was passed on.
    keyframe_asked_at: Option<Instant>,
}

/// One subscriber's layers chosen within its bandwidth ([`Router::allocate_within`]).
#[derive(Debug, Default)]
pub struct Allocation {
    /// The (track, layer) keyframes the choice takes.
    pub keyframes: Vec<(usize, u8)>,
    /// What the subscriber would receive with no limit, bits a second: more than the estimate
    /// is worth probing for.
    pub wanted: f64,
    /// Tracks paused, or resumed, for bandwidth by this choice: (DownTrack, paused).
    pub paused_changed: Vec<(usize, bool)>,
}

pub struct Router {
    receivers: Slab<ReceiverEntry>,
    downtracks: Slab<DownTrackEntry>,
    tracks: HashMap<TrackKey, usize>,
    config: RouterConfig,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(config: RouterConfig, metrics: Arc<Metrics>) -> Self {
        Router {
            receivers: Slab::new(),
            downtracks: Slab::new(),
            tracks: HashMap::new(),
            config,
            metrics,
        }
    }

    /// The Receiver of a published track.
    pub fn track(&self, key: &TrackKey) -> Option<usize> {
        self.tracks.get(key).copied()
    }

    pub fn receiver(&self, rk: usize) -> Option<&ReceiverEntry> {
        self.receivers.get(rk)
    }

    pub fn receiver_mut(&mut self, rk: usize) -> Option<&mut ReceiverEntry> {
        self.receivers.get_mut(rk)
    }

    pub fn downtrack(&self, dk: usize) -> Option<&DownTrackEntry> {
        self.downtracks.get(dk)
    }

    pub fn downtrack_mut(&mut self, dk: usize) -> Option<&mut DownTrackEntry> {
        self.downtracks.get_mut(dk)
    }

    /// Every Receiver of one publisher.
    pub fn published_by(&self, publisher: usize) -> impl Iterator<Item = (usize, &ReceiverEntry)> {
        self.receivers
            .iter()
            .filter(move |(_, r)| r.publisher == publisher)
    }

    /// A stream of a published track began: layer `layer`, arriving with `ssrc`. The first
    /// stream of a track creates it (true in the second value); a later one adds a layer, or
    /// replaces one whose SSRC changed (a renegotiation).
    pub fn add_receiver(
        &mut self,
        publisher: usize,
        meta: TrackMeta,
        layer: u8,
        ssrc: u32,
        now: Instant,
    ) -> (usize, bool) {
        let key = (meta.publisher_id.clone(), meta.track_id.clone());
        let mut receiver = Receiver::new(meta.clone(), ssrc, self.config.pli_interval);
        receiver.layer = layer;
        receiver.set_fault_drop_every(self.config.fault_drop_every);
        let history = receiver
            .is_video()
            .then(|| PacketHistory::new(self.config.nack_window, self.config.nack_max_age));
        let new = Layer {
            receiver,
            last_packet: now,
            active: true,
            history,
            info: LayerInfo::default(),
            rid: None,
            bytes: 0,
            bitrate: 0.0,
            loss: StreamLoss::default(),
        };
        let (rk, created) = match self.tracks.get(&key) {
            Some(&rk) => (rk, false),
            None => {
                let vp8 = meta.codec.mime_type.eq_ignore_ascii_case("video/vp8");
                let rk = self.receivers.insert(ReceiverEntry {
                    meta,
                    publisher,
                    layers: Vec::new(),
                    downtracks: Vec::new(),
                    last_packet: now,
                    muted: false,
                    resized: false,
                    vp8,
                    speech: SpeechMeter::default(),
                    layers_asked: None,
                    fewer_since: None,
                });
                Metrics::inc(&self.metrics.receivers);
                self.tracks.insert(key, rk);
                (rk, true)
            }
        };
        let entry = &mut self.receivers[rk];
        let at = usize::from(layer);
        if entry.layers.len() <= at {
            entry.layers.resize_with(at + 1, || None);
        }
        entry.layers[at] = Some(new);
        (rk, created)
    }

    /// Removes a Receiver; the DownTracks of it, removed too, are returned for their
    /// subscribers to renegotiate.
    pub fn remove_receiver(&mut self, rk: usize) -> Vec<DownTrackEntry> {
        if !self.receivers.contains(rk) {
            return Vec::new();
        }
        let entry = self.receivers.remove(rk);
        Metrics::dec(&self.metrics.receivers);
        let meta = entry.meta;
        if self
            .tracks
            .get(&(meta.publisher_id.clone(), meta.track_id.clone()))
            == Some(&rk)
        {
            self.tracks.remove(&(meta.publisher_id, meta.track_id));
        }
        entry
            .downtracks
            .into_iter()
            .filter_map(|dk| self.take_downtrack(dk))
            .collect()
    }

    /// A new DownTrack of Receiver `rk` for `subscriber`, sending on `peer` with `ssrc`.
    pub fn add_downtrack(
        &mut self,
        rk: usize,
        subscriber: usize,
        peer: usize,
        ssrc: u32,
        transport_up: bool,
    ) -> Option<usize> {
        let r = self.receivers.get(rk)?;
        let video = r.is_video();
        let max_age = if video {
            self.config.queue.video_age
        } else {
            self.config.queue.audio_age
        };
        let mut downtrack = DownTrack::new(
            ssrc,
            video,
            r.meta.codec.clock_rate,
            max_age,
            rand::random(),
            rand::random(),
        );
        if video {
            downtrack = downtrack.with_retransmissions(self.config.nack_window);
        }
        if r.meta.codec.mime_type.eq_ignore_ascii_case("video/vp8") {
            downtrack = downtrack.with_vp8();
        }
        if transport_up {
            downtrack.transport_up();
        }
        let dk = self.downtracks.insert(DownTrackEntry {
            downtrack,
            retransmit_budget: TokenBucket::new(self.config.max_retransmits_per_sec),
            subscriber,
            peer,
            receiver: rk,
            view: View::default(),
            ceiling: None,
            hysteresis: Hysteresis::default(),
            keyframe_asked_at: None,
        });
        Metrics::inc(&self.metrics.downtracks);
        self.receivers[rk].downtracks.push(dk);
        self.allocate(dk);
        Some(dk)
    }

    /// Removes one DownTrack; what it was, for its subscriber's bookkeeping.
    pub fn remove_downtrack(&mut self, dk: usize) -> Option<DownTrackEntry> {
        let d = self.take_downtrack(dk)?;
        if let Some(r) = self.receivers.get_mut(d.receiver) {
            r.downtracks.retain(|&k| k != dk);
        }
        Some(d)
    }

    fn take_downtrack(&mut self, dk: usize) -> Option<DownTrackEntry> {
        if !self.downtracks.contains(dk) {
            return None;
        }
        Metrics::dec(&self.metrics.downtracks);
        Some(self.downtracks.remove(dk))
    }

    /// The hot path: one publisher packet of layer `layer` to every DownTrack of its track.
    /// The layers a DownTrack needs a keyframe of to go on, one bit each (the caller asks the
    /// publisher).
    pub fn fan_out(
        &mut self,
        rk: usize,
        layer: u8,
        packet: &rtp::Packet,
        arrived: Instant,
        now: Instant,
        out: &mut impl MediaOut,
    ) -> u8 {
        let Router {
            receivers,
            downtracks,
            metrics,
            ..
        } = self;
        let Some(entry) = receivers.get_mut(rk) else {
            return 0;
        };
        Metrics::add(&metrics.packets_in, 1);
        Metrics::add(&metrics.bytes_in, packet.payload.len() as u64);
        entry.last_packet = arrived;
        let Some(stream) = entry
            .layers
            .get_mut(usize::from(layer))
            .and_then(Option::as_mut)
        else {
            return 0;
        };
        stream.last_packet = arrived;
        stream.bytes += packet.payload.len() as u64 + PACKET_OVERHEAD;
        stream.loss.on_packet(packet.header.sequence_number);
        if !stream.active {
            stream.active = true;
            entry.resized = true;
        }
        let Some(incoming) = stream.receiver.incoming(packet, arrived) else {
            return 0;
        };
        if let Some(history) = stream.history.as_mut() {
            history.insert(packet, &incoming.carried, arrived);
        } else if let Some(level) = incoming.carried.get(extensions::AUDIO_LEVEL) {
            if let Some(&first) = level.first() {
                entry.speech.observe(first);
            }
        }
        if incoming.is_keyframe && entry.vp8 {
            if let Some(size) = vp8::keyframe_size(&packet.payload) {
                if stream.info.size != Some(size) {
                    stream.info.size = Some(size);
                    entry.resized = true;
                }
            }
        }
        let ntp = extensions::ntp_now();
        let mut wants_keyframe = 0u8;
        for &dk in &entry.downtracks {
            let Some(d) = downtracks.get_mut(dk) else {
                continue;
            };
            let mut buf = out.buffer();
            match d.downtrack.forward(&incoming, now, ntp, &mut buf) {
                Outcome::Send(shape) => {
                    if out.send(d.peer, buf, shape, now) {
                        Metrics::add(&metrics.packets_out, 1);
                        Metrics::add(&metrics.bytes_out, packet.payload.len() as u64);
                    }
                }
                Outcome::Skip {
                    wants_keyframe: wants,
                } => {
                    out.give_back(buf);
                    if wants {
                        wants_keyframe |= keyframe_bit(d.downtrack.keyframe_layer());
                    }
                }
                Outcome::Drop {
                    why,
                    wants_keyframe: wants,
                } => {
                    out.give_back(buf);
                    Metrics::add(dropped_counter(&metrics.dropped, why), 1);
                    if wants {
                        wants_keyframe |= keyframe_bit(d.downtrack.keyframe_layer());
                    }
                }
            }
        }
        wants_keyframe
    }

    /// Answers a subscriber's NACK for DownTrack `dk` from the track's shared history, within
    /// the DownTrack's retransmission budget.
    pub fn retransmit(
        &mut self,
        dk: usize,
        nack: &TransportLayerNack,
        now: Instant,
        out: &mut impl MediaOut,
    ) {
        let Router {
            receivers,
            downtracks,
            metrics,
            ..
        } = self;
        let Some(d) = downtracks.get_mut(dk) else {
            return;
        };
        let Some(track) = receivers.get(d.receiver) else {
            return;
        };
        let history_of = |layer: u8| track.layer(layer).and_then(|l| l.history.as_ref());
        let ntp = extensions::ntp_now();
        let (mut sent, mut missed, mut limited) = (0, 0, 0);
        let wanted = nack.nacks.iter().flat_map(|pair| pair.into_iter());
        for seq in wanted.take(MAX_RETRANSMITS_PER_NACK) {
            let mut buf = out.buffer();
            let Some(shape) = d.downtrack.retransmit(seq, history_of, now, ntp, &mut buf) else {
                out.give_back(buf);
                missed += 1;
                continue;
            };
            if !d.retransmit_budget.allow(now) || !out.may_retransmit(d.peer, buf.len(), now) {
                out.give_back(buf);
                limited += 1;
                continue;
            }
            d.downtrack.count_retransmitted(&buf, shape.header_len, now);
            if out.send(d.peer, buf, shape, now) {
                sent += 1;
            }
        }
        Metrics::add(&metrics.retransmissions, sent);
        Metrics::add(&metrics.retransmissions_missed, missed);
        Metrics::add(&metrics.retransmissions_limited, limited);
    }

    /// The sender reports of these DownTracks, those that have sent anything.
    pub fn sender_reports(
        &self,
        downtracks: impl Iterator<Item = usize>,
        now: Instant,
        ntp: u64,
    ) -> Vec<Box<dyn rtc::rtcp::Packet>> {
        downtracks
            .filter_map(|dk| self.downtracks.get(dk))
            .filter_map(|d| d.downtrack.sender_report(now, ntp))
            .map(|sr| Box::new(sr) as Box<dyn rtc::rtcp::Packet>)
            .collect()
    }

    /// A keyframe of layer `layer` of track `rk` is wanted from its publisher: what to do, now
    /// or later.
    pub fn request_keyframe(
        &mut self,
        rk: usize,
        layer: u8,
        now: Instant,
        urgent: bool,
    ) -> KeyframeRequest {
        self.receivers
            .get_mut(rk)
            .and_then(|r| r.layer_mut(layer))
            .map_or(KeyframeRequest::Nothing, |l| {
                l.receiver.request_keyframe(now, urgent)
            })
    }
}

/// One bit for a layer (none for none).
fn keyframe_bit(layer: Option<u8>) -> u8 {
    layer.filter(|&l| l < 8).map_or(0, |l| 1 << l)
}

/// The counter of packets a DownTrack did not send, by reason.
fn dropped_counter(dropped: &metrics::Dropped, why: Dropped) -> &std::sync::atomic::AtomicU64 {
    match why {
        Dropped::NotNegotiated => &dropped.not_negotiated,
        Dropped::Refused(Refused::WaitingForKeyframe) => &dropped.waiting_for_keyframe,
        Dropped::Refused(Refused::TooOld) => &dropped.too_old,
        Dropped::Refused(Refused::Duplicate) => &dropped.duplicate,
        Dropped::Refused(Refused::Expired) => &dropped.expired,
    }
}

#[cfg(test)]
mod tests;
