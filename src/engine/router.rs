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
use crate::media::receiver::{KeyframeRequest, Receiver, TrackMeta};
use crate::media::speech::SpeechMeter;
use crate::media::vp8;
use crate::metrics::{self, Metrics};
use crate::ratelimit::TokenBucket;

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
    fn layer_rates(&self) -> Vec<Option<f64>> {
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
        });
        Metrics::inc(&self.metrics.downtracks);
        self.receivers[rk].downtracks.push(dk);
        self.allocate(dk);
        Some(dk)
    }

    /// Chooses DownTrack `dk`'s layer for how its subscriber shows the track. The layer whose
    /// keyframe that takes, when it takes one and the DownTrack can send.
    pub fn allocate(&mut self, dk: usize) -> Option<u8> {
        let d = self.downtracks.get_mut(dk)?;
        let layers = self.receivers.get(d.receiver)?.layer_infos();
        let mut target = allocator::layer_for_view(&layers, d.view);
        if let Some(ceiling) = d.ceiling {
            target = target.zip(ceiling).map(|(t, c)| t.min(c));
        }
        let needs_keyframe = d.downtrack.set_layer(target);
        if needs_keyframe {
            tracing::debug!(dk, ?target, view = ?d.view, ceiling = ?d.ceiling, "layer chosen");
        }
        (needs_keyframe && d.downtrack.is_ready())
            .then_some(target)
            .flatten()
    }

    /// Chooses the layers of one subscriber's DownTracks `dks` within `budget` bits a second
    /// (see [`allocator::allocate`]); down at once, up after the estimate held
    /// ([`Hysteresis`]).
    pub fn allocate_within(&mut self, dks: &[usize], budget: f64, now: Instant) -> Allocation {
        let mut video = Vec::with_capacity(dks.len());
        let mut demands = Vec::with_capacity(dks.len());
        let mut audio = 0;
        let mut wanted = 0.0;
        for &dk in dks {
            let Some(d) = self.downtracks.get(dk) else {
                continue;
            };
            let Some(r) = self.receivers.get(d.receiver) else {
                continue;
            };
            if !r.is_video() {
                audio += 1;
                wanted += allocator::AUDIO_RESERVE;
                continue;
            }
            let layers = r.layer_rates();
            let view_layer = allocator::layer_for_view(&r.layer_infos(), d.view);
            wanted += view_layer
                .and_then(|l| layers.get(usize::from(l)).copied().flatten())
                .unwrap_or(0.0);
            video.push(dk);
            demands.push(Demand {
                layers,
                wanted: view_layer,
                priority: r.priority(),
            });
        }
        let allowed = allocator::allocate(budget, audio, &demands);
        // What it has now may stay while the budget is a little short: estimates wobble, and
        // a switch costs a keyframe.
        let lenient = allocator::allocate(budget * (1.0 + allocator::KEEP_MARGIN), audio, &demands);
        let mut allocation = Allocation {
            wanted,
            ..Allocation::default()
        };
        for (((dk, allowed), lenient), demand) in
            video.into_iter().zip(allowed).zip(lenient).zip(&demands)
        {
            let Some(d) = self.downtracks.get_mut(dk) else {
                continue;
            };
            let allowed = match d.ceiling {
                Some(current) if allowed < current && current <= lenient => current,
                _ => allowed,
            };
            // Before any estimate, it had what its view asks for.
            let current = d.ceiling.unwrap_or(demand.wanted);
            let ceiling = d
                .hysteresis
                .settle(current, allowed, lowest_arriving(demand), now);
            let was_paused = d.ceiling == Some(None) && d.view.enabled;
            let paused = ceiling.is_none() && demand.wanted.is_some();
            if paused != was_paused {
                allocation.paused_changed.push((dk, paused));
            }
            d.ceiling = Some(ceiling);
            let receiver = d.receiver;
            if let Some(layer) = self.allocate(dk) {
                allocation.keyframes.push((receiver, layer));
            }
        }
        allocation
    }

    /// Names layer `layer` of track `rk` as its publisher does.
    pub fn set_rid(&mut self, rk: usize, layer: u8, rid: Option<String>) {
        if let Some(l) = self.receivers.get_mut(rk).and_then(|r| r.layer_mut(layer)) {
            l.rid = rid;
        }
    }

    /// Simulcast tracks whose publisher is to send other layers than it was last asked (see
    /// [`Router::layers_needed`]): (track, the rids to send). More layers are asked for at
    /// once; fewer only once fewer have done for `LAYERS_OFF_AFTER`, so a subscriber that
    /// moves up again soon finds its layer running.
    pub fn layers_to_ask(&mut self, now: Instant) -> Vec<(usize, Vec<String>)> {
        let mut asks = Vec::new();
        let keys: Vec<usize> = self
            .receivers
            .iter()
            .filter(|(_, r)| r.layers.len() > 1)
            .map(|(rk, _)| rk)
            .collect();
        for rk in keys {
            let Some(needed) = self.layers_needed(rk) else {
                continue;
            };
            let r = &mut self.receivers[rk];
            let asked = r.layers_asked.as_ref();
            if asked == Some(&needed) {
                r.fewer_since = None;
                continue;
            }
            let fewer = asked.is_some_and(|a| needed.iter().all(|n| a.contains(n)));
            if fewer {
                let since = *r.fewer_since.get_or_insert(now);
                if now.saturating_duration_since(since) < LAYERS_OFF_AFTER {
                    continue;
                }
            }
            r.fewer_since = None;
            r.layers_asked = Some(needed.clone());
            asks.push((rk, needed));
        }
        asks
    }

    /// The layers of simulcast track `rk` its subscribers need: up to the highest any of them
    /// shows it at (counting layers the publisher stopped), and every layer below (cheap, and
    /// where a subscriber goes down at once); the lowest even when nobody watches. `None` when
    /// the track's layers have no names.
    ///
    /// Views only, not bandwidth: a layer that is not sent has no bitrate to weigh against a
    /// subscriber's estimate, so a subscriber held down by its estimate could never have it
    /// back.
    pub fn layers_needed(&self, rk: usize) -> Option<Vec<String>> {
        let r = self.receivers.get(rk)?;
        let all: Vec<Option<LayerInfo>> = r
            .layers
            .iter()
            .map(|l| l.as_ref().map(|l| l.info))
            .collect();
        let highest = r
            .downtracks
            .iter()
            .filter_map(|&dk| self.downtracks.get(dk))
            .filter_map(|d| allocator::layer_for_view(&all, d.view))
            .max();
        let rids: Vec<String> = r
            .layers
            .iter()
            // The lowest always: a track that falls silent reads as its publisher gone, and a
            // new subscriber starts on something at once.
            .take(highest.map_or(1, |h| usize::from(h) + 1))
            .filter_map(|l| l.as_ref().and_then(|l| l.rid.clone()))
            .collect();
        r.layers
            .iter()
            .flatten()
            .any(|l| l.rid.is_some())
            .then_some(rids)
    }

    /// Every layer's bitrate from the bytes that arrived since the last call.
    pub fn measure_layers(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        for (_, r) in self.receivers.iter_mut() {
            for layer in r.layers.iter_mut().flatten() {
                let sample = std::mem::take(&mut layer.bytes) as f64 * 8.0 / seconds;
                layer.bitrate = if layer.bitrate == 0.0 {
                    sample
                } else {
                    layer.bitrate + BITRATE_SMOOTHING * (sample - layer.bitrate)
                };
            }
        }
    }

    /// Writes up to `bytes` of padding into the stream of one of `dks` that can take it, to
    /// probe its subscriber's downlink; the bytes sent.
    pub fn pad(
        &mut self,
        dks: &[usize],
        bytes: usize,
        now: Instant,
        out: &mut impl MediaOut,
    ) -> usize {
        let ntp = extensions::ntp_now();
        let mut sent = 0;
        for &dk in dks {
            let Some(d) = self.downtracks.get_mut(dk) else {
                continue;
            };
            while sent < bytes {
                let mut buf = out.buffer();
                let Some(shape) = d.downtrack.pad(now, ntp, &mut buf) else {
                    out.give_back(buf);
                    break;
                };
                let len = buf.len();
                if !out.send(d.peer, buf, shape, now) {
                    return sent;
                }
                Metrics::add(&self.metrics.padding_packets, 1);
                sent += len;
            }
            if sent >= bytes {
                break;
            }
        }
        sent
    }

    /// How the subscriber of DownTrack `dk` shows its track now: its layer is chosen again.
    pub fn set_view(&mut self, dk: usize, view: View) -> Option<u8> {
        self.downtracks.get_mut(dk)?.view = view;
        self.allocate(dk)
    }

    /// Chooses again the layer of every DownTrack of track `rk` (its layers changed): the
    /// layers whose keyframes that takes.
    pub fn reallocate(&mut self, rk: usize) -> u8 {
        let Some(entry) = self.receivers.get_mut(rk) else {
            return 0;
        };
        entry.resized = false;
        let downtracks = entry.downtracks.clone();
        downtracks
            .into_iter()
            .filter_map(|dk| self.allocate(dk))
            .fold(0, |bits, layer| bits | keyframe_bit(Some(layer)))
    }

    /// The tracks of more than one layer where a layer stopped arriving since the last look:
    /// their DownTracks' layers are to be chosen again.
    pub fn stalled_layers(&mut self, now: Instant) -> Vec<usize> {
        self.receivers
            .iter_mut()
            .filter(|(_, r)| r.layers.len() > 1)
            .filter_map(|(rk, r)| r.refresh_activity(now).then_some(rk))
            .collect()
    }

    /// Whether a layer of track `rk` changed size since its DownTracks' layers were chosen.
    pub fn resized(&self, rk: usize) -> bool {
        self.receivers.get(rk).is_some_and(|r| r.resized)
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
            if !d.retransmit_budget.allow(now) {
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

/// The lowest layer of a track that arrives, up to the one its view wants.
fn lowest_arriving(demand: &Demand) -> Option<u8> {
    let wanted = demand.wanted?;
    demand
        .layers
        .iter()
        .take(usize::from(wanted) + 1)
        .position(Option::is_some)
        .map(|l| l as u8)
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
mod tests {
    use super::*;
    use crate::media::downtrack::Negotiated;
    use crate::media::extensions::{ExtensionIds, SubscriberExtensions, SDES_MID};
    use crate::media::kind::TrackKind;
    use crate::media::receiver::Codec;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
    use rtc::shared::marshal::Unmarshal;

    /// What a test's `MediaOut` was given: (peer, the packet as a subscriber parses it).
    #[derive(Default)]
    struct Recorded {
        sent: Vec<(usize, rtp::Packet)>,
        buffers_out: usize,
        refuse_peer: Option<usize>,
    }

    impl MediaOut for Recorded {
        fn buffer(&mut self) -> BytesMut {
            self.buffers_out += 1;
            BytesMut::with_capacity(1500)
        }
        fn give_back(&mut self, _buf: BytesMut) {
            self.buffers_out -= 1;
        }
        fn send(&mut self, peer: usize, packet: BytesMut, shape: Shape, _: Instant) -> bool {
            self.buffers_out -= 1;
            if self.refuse_peer == Some(peer) {
                return false;
            }
            let parsed = rtp::Packet::unmarshal(&mut &packet[..]).expect("an RTP packet");
            let padding = if parsed.header.padding {
                usize::from(packet[packet.len() - 1])
            } else {
                0
            };
            assert_eq!(
                packet.len() - shape.header_len,
                parsed.payload.len() + padding
            );
            self.sent.push((peer, parsed));
            true
        }
    }

    fn router() -> Router {
        Router::new(
            RouterConfig {
                pli_interval: Duration::from_millis(500),
                nack_window: 64,
                nack_max_age: Duration::from_secs(1),
                max_retransmits_per_sec: 2,
                queue: QueueLimits {
                    audio_age: Duration::from_millis(100),
                    video_age: Duration::from_millis(200),
                },
                fault_drop_every: None,
            },
            Arc::new(Metrics::default()),
        )
    }

    fn video_meta(publisher: &str) -> TrackMeta {
        TrackMeta {
            publisher_id: publisher.into(),
            track_id: format!("{publisher}-video"),
            kind: TrackKind::Video,
            codec: Codec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
            },
            extensions: ExtensionIds::default(),
        }
    }

    /// A subscriber DownTrack that has its answer and its transport.
    fn subscribe(
        r: &mut Router,
        rk: usize,
        subscriber: usize,
        peer: usize,
        ssrc: u32,
        mid: &str,
    ) -> usize {
        let dk = r.add_downtrack(rk, subscriber, peer, ssrc, true).unwrap();
        r.downtrack_mut(dk)
            .unwrap()
            .downtrack
            .set_negotiated(Negotiated {
                payload_type: 96 + subscriber as u8,
                extensions: SubscriberExtensions::new(
                    ExtensionIds::from_negotiated([(SDES_MID, 1)]),
                    Some(1),
                    mid,
                ),
            });
        dk
    }

    fn vp8(seq: u16, keyframe: bool) -> rtp::Packet {
        let mut p = rtp::Packet::default();
        p.header.ssrc = 1234;
        p.header.sequence_number = seq;
        p.header.timestamp = u32::from(seq) * 3000;
        // VP8 payload descriptor, then a frame header whose lowest bit is 0 on a keyframe.
        p.payload =
            bytes::Bytes::from(vec![0x10, u8::from(!keyframe), 0x9d, 0x01, 0x2a, seq as u8]);
        p
    }

    #[test]
    fn one_packet_reaches_every_subscriber_under_its_own_numbers() {
        let now = Instant::now();
        let mut r = router();
        let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
        let bob = subscribe(&mut r, rk, 1, 10, 0xb0b, "3");
        let carol = subscribe(&mut r, rk, 2, 20, 0xca401, "7");
        let mut out = Recorded::default();
        assert_eq!(r.fan_out(rk, 0, &vp8(100, true), now, now, &mut out), 0);
        assert_eq!(r.fan_out(rk, 0, &vp8(101, false), now, now, &mut out), 0);
        assert_eq!(out.buffers_out, 0, "every buffer sent or given back");
        fn to(out: &Recorded, peer: usize) -> Vec<&rtp::Packet> {
            out.sent
                .iter()
                .filter(|(p, _)| *p == peer)
                .map(|(_, p)| p)
                .collect()
        }
        for (peer, ssrc, pt, mid) in [(10, 0xb0b, 97, b"3"), (20, 0xca401, 98, b"7")] {
            let got = to(&out, peer);
            assert_eq!(got.len(), 2);
            assert!(got
                .iter()
                .all(|p| p.header.ssrc == ssrc && p.header.payload_type == pt));
            assert_eq!(got[0].header.get_extension(1).unwrap().as_ref(), mid);
            assert_eq!(
                got[1].header.sequence_number,
                got[0].header.sequence_number.wrapping_add(1)
            );
            assert_eq!(got[0].payload, vp8(100, true).payload);
        }
        assert_eq!(r.metrics.snapshot().packets_out, 4);
        r.remove_downtrack(bob);
        r.fan_out(rk, 0, &vp8(102, false), now, now, &mut out);
        assert_eq!(to(&out, 10).len(), 2, "bob no longer receives");
        assert_eq!(to(&out, 20).len(), 3);
        assert!(r.downtrack(carol).is_some());
    }

    #[test]
    fn a_subscriber_without_a_keyframe_waits_and_asks_for_one() {
        let now = Instant::now();
        let mut r = router();
        let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
        subscribe(&mut r, rk, 1, 10, 5, "0");
        let mut out = Recorded::default();
        assert_eq!(
            r.fan_out(rk, 0, &vp8(7, false), now, now, &mut out),
            1,
            "wants a keyframe of layer 0"
        );
        assert!(out.sent.is_empty());
        assert_eq!(out.buffers_out, 0);
        assert_eq!(r.metrics.snapshot().dropped.waiting_for_keyframe, 1);
        assert_eq!(
            r.request_keyframe(rk, 0, now, true),
            KeyframeRequest::SendNow
        );
    }

    #[test]
    fn a_nack_is_answered_from_the_shared_history_within_the_budget() {
        let now = Instant::now();
        let mut r = router();
        let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
        let dk = subscribe(&mut r, rk, 1, 10, 5, "0");
        let mut out = Recorded::default();
        for seq in 0..10 {
            r.fan_out(rk, 0, &vp8(seq, seq == 0), now, now, &mut out);
        }
        let first = out.sent[0].1.header.sequence_number;
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 5,
            nacks: vec![NackPair {
                packet_id: first.wrapping_add(2),
                // The next four too: six wanted, a budget of four (twice the rate).
                lost_packets: 0b1111,
            }],
        };
        out.sent.clear();
        r.retransmit(dk, &nack, now, &mut out);
        assert_eq!(out.sent.len(), 4);
        assert_eq!(out.sent[0].1.header.sequence_number, first.wrapping_add(2));
        assert_eq!(out.sent[0].1.payload, vp8(2, false).payload);
        let m = r.metrics.snapshot();
        assert_eq!((m.retransmissions, m.retransmissions_limited), (4, 1));
        assert_eq!(out.buffers_out, 0);
    }

    #[test]
    fn removing_a_receiver_takes_its_downtracks_with_it() {
        let now = Instant::now();
        let mut r = router();
        let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
        subscribe(&mut r, rk, 1, 10, 5, "0");
        subscribe(&mut r, rk, 2, 20, 6, "0");
        let gone = r.remove_receiver(rk);
        assert_eq!(gone.len(), 2);
        assert!(r.track(&("alice".into(), "alice-video".into())).is_none());
        let m = r.metrics.snapshot();
        assert_eq!((m.receivers, m.downtracks), (0, 0));
        let mut out = Recorded::default();
        assert_eq!(r.fan_out(rk, 0, &vp8(1, true), now, now, &mut out), 0);
        assert!(out.sent.is_empty());
    }

    /// A three-layer track (150 k, 450 k, 1.3 Mbit/s) and one subscriber of it.
    fn simulcast_subscriber(now: Instant) -> (Router, usize, usize) {
        let mut r = router();
        let mut rk = 0;
        for (layer, rate) in [150_000.0, 450_000.0, 1_300_000.0].into_iter().enumerate() {
            rk = r
                .add_receiver(
                    0,
                    video_meta("alice"),
                    layer as u8,
                    1000 + layer as u32,
                    now,
                )
                .0;
            r.receiver_mut(rk)
                .unwrap()
                .layer_mut(layer as u8)
                .unwrap()
                .bitrate = rate;
        }
        let dk = subscribe(&mut r, rk, 1, 10, 5, "0");
        (r, rk, dk)
    }

    fn ceiling(r: &Router, dk: usize) -> Option<Option<u8>> {
        r.downtrack(dk).unwrap().ceiling
    }

    #[test]
    fn a_subscriber_gets_what_its_estimate_allows_down_at_once_up_after_a_hold() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (mut r, rk, dk) = simulcast_subscriber(t0);
        let a = r.allocate_within(&[dk], 700_000.0, at(0));
        assert_eq!(ceiling(&r, dk), Some(Some(1)));
        assert_eq!(a.keyframes, vec![(rk, 1)], "the middle layer's keyframe");
        assert!(a.wanted > 1_000_000.0, "it would take the full layer");
        // The estimate falls under the lowest layer: the lowest at once, paused (and said so)
        // only if that lasts.
        let a = r.allocate_within(&[dk], 100_000.0, at(250));
        assert_eq!(ceiling(&r, dk), Some(Some(0)));
        assert!(a.paused_changed.is_empty());
        let a = r.allocate_within(&[dk], 100_000.0, at(2_300));
        assert_eq!(ceiling(&r, dk), Some(None));
        assert_eq!(a.paused_changed, vec![(dk, true)]);
        // Back up: the lowest layer at once (it shows nothing meanwhile), and resumed.
        let a = r.allocate_within(&[dk], 300_000.0, at(2_500));
        assert_eq!(ceiling(&r, dk), Some(Some(0)));
        assert_eq!(a.paused_changed, vec![(dk, false)]);
        // Plenty: held for three seconds first.
        r.allocate_within(&[dk], 5_000_000.0, at(2_750));
        assert_eq!(ceiling(&r, dk), Some(Some(0)));
        r.allocate_within(&[dk], 5_000_000.0, at(5_000));
        assert_eq!(ceiling(&r, dk), Some(Some(0)));
        let a = r.allocate_within(&[dk], 5_000_000.0, at(5_800));
        assert_eq!(ceiling(&r, dk), Some(Some(2)));
        assert_eq!(a.keyframes, vec![(rk, 2)]);
        // A little short of what it has: it keeps it.
        r.allocate_within(&[dk], 1_300_000.0, at(6_000));
        assert_eq!(ceiling(&r, dk), Some(Some(2)));
        // A view smaller than the top layer caps it whatever the estimate.
        r.downtrack_mut(dk).unwrap().view = View {
            width: 0,
            height: 0,
            enabled: false,
        };
        let a = r.allocate_within(&[dk], 5_000_000.0, at(6_250));
        assert_eq!(a.wanted, 0.0, "a hidden track wants nothing");
    }

    #[test]
    fn padding_continues_the_numbering_between_frames() {
        let now = Instant::now();
        let mut r = router();
        let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
        let dk = subscribe(&mut r, rk, 1, 10, 5, "0");
        let mut out = Recorded::default();
        // No stream yet: nothing to pad.
        assert_eq!(r.pad(&[dk], 1000, now, &mut out), 0);
        for seq in 0..20 {
            let mut p = vp8(seq, seq == 0);
            p.header.marker = true;
            r.fan_out(rk, 0, &p, now, now, &mut out);
        }
        let last = out.sent.last().unwrap().1.header.clone();
        let sent = r.pad(&[dk], 1000, now, &mut out);
        assert!(sent >= 1000, "{sent}");
        let padding: Vec<_> = out.sent[20..].iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(padding.len(), 4, "255 bytes of padding each");
        for (i, p) in padding.iter().enumerate() {
            assert!(p.header.padding && p.payload.is_empty());
            assert_eq!(
                p.header.sequence_number,
                last.sequence_number.wrapping_add(1 + i as u16)
            );
            assert_eq!(p.header.timestamp, last.timestamp);
            assert_eq!(p.header.ssrc, 5);
        }
        let mut next = vp8(20, false);
        next.header.marker = true;
        r.fan_out(rk, 0, &next, now, now, &mut out);
        assert_eq!(
            out.sent.last().unwrap().1.header.sequence_number,
            last.sequence_number.wrapping_add(5)
        );
        assert_eq!(r.metrics.snapshot().padding_packets, 4);
        assert_eq!(out.buffers_out, 0);
    }

    #[test]
    fn the_publisher_is_asked_for_the_layers_someone_shows_and_stops_the_rest_after_a_while() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (mut r, rk, dk) = simulcast_subscriber(t0);
        for (layer, rid) in ["q", "h", "f"].into_iter().enumerate() {
            r.set_rid(rk, layer as u8, Some(rid.into()));
        }
        // Sizes from keyframes: 320×180, 640×360, 1280×720.
        for (layer, width) in [320u32, 640, 1280].into_iter().enumerate() {
            r.receiver_mut(rk)
                .unwrap()
                .layer_mut(layer as u8)
                .unwrap()
                .info
                .size = Some((width, width * 9 / 16));
        }
        let rids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Unknown view: the top, so everything.
        assert_eq!(r.layers_to_ask(at(0)), vec![(rk, rids(&["q", "h", "f"]))]);
        assert!(r.layers_to_ask(at(100)).is_empty(), "told once");
        // A small tile: fewer layers, but only once that has lasted.
        r.downtrack_mut(dk).unwrap().view = View {
            enabled: true,
            width: 300,
            height: 170,
        };
        assert!(r.layers_to_ask(at(200)).is_empty());
        assert!(r.layers_to_ask(at(2_000)).is_empty());
        assert_eq!(r.layers_to_ask(at(3_300)), vec![(rk, rids(&["q"]))]);
        // Larger again: more at once.
        r.downtrack_mut(dk).unwrap().view = View {
            enabled: true,
            width: 600,
            height: 340,
        };
        assert_eq!(r.layers_to_ask(at(3_400)), vec![(rk, rids(&["q", "h"]))]);
        // Hidden: the lowest stays on.
        r.downtrack_mut(dk).unwrap().view = View {
            enabled: false,
            width: 0,
            height: 0,
        };
        assert!(r.layers_to_ask(at(3_500)).is_empty());
        assert_eq!(r.layers_to_ask(at(6_600)), vec![(rk, rids(&["q"]))]);
    }

    #[test]
    fn an_audio_track_measures_its_speech_from_the_level_extension() {
        let now = Instant::now();
        let mut r = router();
        let mut meta = video_meta("alice");
        meta.kind = TrackKind::Audio;
        meta.track_id = "alice-audio".into();
        meta.codec = Codec {
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: String::new(),
        };
        meta.extensions =
            ExtensionIds::from_negotiated([(crate::media::extensions::AUDIO_LEVEL, 1)]);
        let (rk, _) = r.add_receiver(0, meta, 0, 77, now);
        let mut out = Recorded::default();
        for seq in 0..10u16 {
            let mut p = rtp::Packet::default();
            p.header.ssrc = 77;
            p.header.sequence_number = seq;
            p.header.extension = true;
            p.header.extension_profile = 0xbede;
            p.header
                .set_extension(1, bytes::Bytes::from_static(&[0x80 | 20]))
                .unwrap();
            p.payload = bytes::Bytes::from_static(&[1, 2, 3]);
            r.fan_out(rk, 0, &p, now, now, &mut out);
        }
        let level = r.receiver_mut(rk).unwrap().speech.take(now);
        assert!(level.is_some_and(|l| l > 0.8), "{level:?}");
    }
}
