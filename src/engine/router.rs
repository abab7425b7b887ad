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
use crate::media::allocator::{self, LayerInfo, View};
use crate::media::downtrack::{DownTrack, Dropped, Outcome, QueueLimits};
use crate::media::extensions;
use crate::media::forwarder::Refused;
use crate::media::history::PacketHistory;
use crate::media::receiver::{KeyframeRequest, Receiver, TrackMeta};
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
    /// Sends `packet` (plain RTP: a header of `header_len` bytes, then the payload) on peer
    /// connection `peer`; false if it could not go.
    fn send(
        &mut self,
        peer: usize,
        packet: BytesMut,
        header_len: usize,
        video: bool,
        now: Instant,
    ) -> bool;
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
}

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
        let target = allocator::layer_for_view(&layers, d.view);
        let needs_keyframe = d.downtrack.set_layer(target);
        tracing::debug!(dk, ?target, view = ?d.view, "layer chosen");
        (needs_keyframe && d.downtrack.is_ready())
            .then_some(target)
            .flatten()
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
        if !stream.active {
            stream.active = true;
            entry.resized = true;
        }
        let Some(incoming) = stream.receiver.incoming(packet, arrived) else {
            return 0;
        };
        if let Some(history) = stream.history.as_mut() {
            history.insert(packet, &incoming.carried, arrived);
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
                Outcome::Send { header_len } => {
                    let video = d.downtrack.is_video();
                    if out.send(d.peer, buf, header_len, video, now) {
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
            let Some(header_len) = d.downtrack.retransmit(seq, history_of, now, ntp, &mut buf)
            else {
                out.give_back(buf);
                missed += 1;
                continue;
            };
            if !d.retransmit_budget.allow(now) {
                out.give_back(buf);
                limited += 1;
                continue;
            }
            d.downtrack.count_retransmitted(&buf, header_len, now);
            if out.send(d.peer, buf, header_len, d.downtrack.is_video(), now) {
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
        fn send(
            &mut self,
            peer: usize,
            packet: BytesMut,
            header_len: usize,
            _: bool,
            _: Instant,
        ) -> bool {
            self.buffers_out -= 1;
            if self.refuse_peer == Some(peer) {
                return false;
            }
            let parsed = rtp::Packet::unmarshal(&mut &packet[..]).expect("an RTP packet");
            assert_eq!(packet.len() - header_len, parsed.payload.len());
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
}
