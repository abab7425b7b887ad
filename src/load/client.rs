//! A protocol client: a real WebRTC participant speaking the signaling protocol.
//!
//! The integration tests and the load tester both use it. It joins a room, answers the
//! server's subscriber offers, publishes synthetic VP8 and Opus over its own publisher PC,
//! records every packet it receives per remote track, and chats over the `chat` channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription,
};

pub use crate::load::error::ClientError;
use crate::load::feedback::is_keyframe_request;
use crate::load::payload::{read_stamp, unix_micros, vp8_prefix, write_stamp, Stamp};
use crate::load::peer::{candidate_from_init, candidate_to_init, Pc, PcFactory};
use crate::load::seen::{Seen, SeenCounters};
use crate::load::wire::{
    ChatRelay, ChatSend, ClientMessage, ParticipantState, PcKind, ServerMessage, CHAT_LABEL,
};
use crate::metrics::Metrics;

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
    freeze_threshold: Duration,
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
    fn new(stream_id: String, track_id: String, kind: String, clock_rate: u32) -> Self {
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

    fn record(&mut self, packet: &rtp::Packet, now: Instant) {
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

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub video: bool,
    pub audio: bool,
    pub video_bitrate_bps: u32,
    pub frame_rate: u32,
    /// A keyframe every this long (and on every PLI).
    pub keyframe_interval: Duration,
    /// Send this real VP8 clip instead of synthetic frames (loops; PLI skips to the next
    /// keyframe). Its packets carry no stamp, so latency is not measured on them.
    pub clip: Option<Arc<crate::load::clip::Clip>>,
    /// Send video as a flood of one-packet frames instead: crosses sequence-number wraps in
    /// seconds rather than minutes.
    pub flood: Option<Flood>,
    /// Kinds (`"audio"`, `"video"`) announced muted: `mute` goes right after the offer,
    /// before any media, as a client that joins with its microphone off does.
    pub start_muted: Vec<String>,
}

/// A fast, fixed-rate stream of one-packet VP8 frames (the first a keyframe, and one on
/// every PLI), stamped like the rest.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub packets: u64,
    pub per_second: u32,
    pub payload_bytes: usize,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            video: true,
            audio: true,
            video_bitrate_bps: 300_000,
            frame_rate: 30,
            keyframe_interval: Duration::from_secs(60),
            clip: None,
            flood: None,
            start_muted: Vec::new(),
        }
    }
}

/// Counters of what this client published.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub video_packets: AtomicU64,
    pub audio_packets: AtomicU64,
    pub keyframes: AtomicU64,
    pub plis_received: AtomicU64,
}

#[derive(Default)]
struct Shared {
    tracks: Mutex<HashMap<(String, String), RemoteTrackStats>>,
    remotes: Mutex<HashMap<(String, String), Arc<dyn TrackRemote>>>,
    chat: Mutex<Vec<ChatRelay>>,
    chat_errors: Mutex<Vec<String>>,
    chat_channel: Mutex<Option<Arc<dyn DataChannel>>>,
    publisher_connected: AtomicBool,
    /// Set when the signaling socket closed under us (the server went away, say).
    signaling_closed: AtomicBool,
    freeze_threshold_us: AtomicU64,
    record_arrivals: AtomicBool,
    last_subscriber_offer: Mutex<Option<String>>,
    last_publisher_answer: Mutex<Option<String>>,
    /// See [`JoinOptions::answer_delay`].
    answer_delay: Duration,
}

/// How a client joins.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub token: Option<String>,
    /// Holds each subscriber answer this long after the local description is set (its
    /// connectivity checks start at once): a client on a slow signaling path, as tests need.
    pub answer_delay: Duration,
}

pub struct Client {
    pub id: String,
    pub name: String,
    pub room: String,
    pub participants_at_join: Vec<ParticipantState>,
    pub join_time: Duration,
    /// When the socket was opened: join time to first media is measured from here.
    pub started_at: Instant,
    outgoing: mpsc::UnboundedSender<String>,
    events: AsyncMutex<mpsc::UnboundedReceiver<ServerMessage>>,
    shared: Arc<Shared>,
    factory: Arc<PcFactory>,
    subscriber: Arc<AsyncMutex<Option<Pc>>>,
    publisher: Arc<AsyncMutex<Option<Pc>>>,
    pub publish_stats: Arc<PublishStats>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    media_tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct SubscriberEvents {
    outgoing: mpsc::UnboundedSender<String>,
    shared: Arc<Shared>,
    pc: PcKind,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for SubscriberEvents {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let message = ClientMessage::Candidate {
                pc: self.pc,
                candidate: Some(candidate_from_init(init)),
            };
            let _ = self.outgoing.send(message.encode());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if self.pc == PcKind::Publisher && state == RTCPeerConnectionState::Connected {
            self.shared
                .publisher_connected
                .store(true, Ordering::Release);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let stream_id = track.stream_id().await;
        let track_id = track.track_id().await;
        let kind = track.kind().await;
        let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
        let clock_rate = track.codec(ssrc).await.map(|c| c.clock_rate).unwrap_or(0);
        let key = (stream_id.clone(), track_id.clone());
        {
            let Ok(mut tracks) = self.shared.tracks.lock() else {
                return;
            };
            let mut stats = RemoteTrackStats::new(
                stream_id,
                track_id,
                kind.to_string().to_lowercase(),
                clock_rate,
            );
            stats.freeze_threshold =
                Duration::from_micros(self.shared.freeze_threshold_us.load(Ordering::Relaxed));
            if self.shared.record_arrivals.load(Ordering::Relaxed) {
                stats.arrivals = Some(Vec::new());
            }
            tracks.insert(key.clone(), stats);
        }
        if let Ok(mut remotes) = self.shared.remotes.lock() {
            remotes.insert(key.clone(), track.clone());
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        if let Ok(mut tracks) = shared.tracks.lock() {
                            if let Some(stats) = tracks.get_mut(&key) {
                                stats.record(&packet, Instant::now());
                            }
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        if channel.label().await.ok().as_deref() != Some(CHAT_LABEL) {
            return;
        }
        if let Ok(mut slot) = self.shared.chat_channel.lock() {
            *slot = Some(channel.clone());
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                if let DataChannelEvent::OnMessage(message) = event {
                    let Ok(text) = std::str::from_utf8(&message.data) else {
                        continue;
                    };
                    if let Some(relay) = ChatRelay::decode(text) {
                        if let Ok(mut chat) = shared.chat.lock() {
                            chat.push(relay);
                        }
                    } else if let Ok(mut errors) = shared.chat_errors.lock() {
                        errors.push(text.to_string());
                    }
                }
            }
        });
    }
}

impl Client {
    /// Connects, joins and returns once `joined` arrived.
    pub async fn join(url: &str, room: &str, name: &str) -> Result<Client, ClientError> {
        Self::join_with_token(url, room, name, None).await
    }

    pub async fn join_with_token(
        url: &str,
        room: &str,
        name: &str,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        let options = JoinOptions {
            token: token.map(str::to_string),
            ..JoinOptions::default()
        };
        Self::join_with(url, room, name, &options).await
    }

    pub async fn join_with(
        url: &str,
        room: &str,
        name: &str,
        options: &JoinOptions,
    ) -> Result<Client, ClientError> {
        let token = options.token.as_deref();
        let started = Instant::now();
        // Nagle off, as browsers have it: otherwise a small message written while the last
        // one is unacknowledged (an answer right after an answer) waits for the server's
        // delayed ACK, 40 ms, and every renegotiation looks that much slower than it is.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_string(),
                source,
            })?;
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(text) = outgoing_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let _ = outgoing.send(ClientMessage::Join { room, name, token }.encode());
        // Read until joined (or an error) before handing the socket to the reader task.
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(frame) = stream.next().await {
                let Ok(Message::Text(text)) = frame else {
                    if matches!(frame, Ok(Message::Close(_)) | Err(_)) {
                        return Err(ClientError::Closed);
                    }
                    continue;
                };
                match ServerMessage::decode(&text) {
                    Some(m @ ServerMessage::Joined { .. }) => return Ok(m),
                    Some(ServerMessage::Error { code, message, .. }) => {
                        return Err(ClientError::Refused { code, message })
                    }
                    _ => {}
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("joined"))??;
        let ServerMessage::Joined {
            participant,
            participants,
            room,
            ..
        } = joined
        else {
            return Err(ClientError::Closed);
        };

        let metrics = Arc::new(Metrics::default());
        let factory = Arc::new(PcFactory::loopback(metrics));
        let shared = Arc::new(Shared {
            freeze_threshold_us: AtomicU64::new(DEFAULT_FREEZE_THRESHOLD.as_micros() as u64),
            answer_delay: options.answer_delay,
            ..Shared::default()
        });
        let subscriber: Arc<AsyncMutex<Option<Pc>>> = Arc::new(AsyncMutex::new(None));
        let publisher: Arc<AsyncMutex<Option<Pc>>> = Arc::new(AsyncMutex::new(None));
        let (events_tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            stream,
            outgoing.clone(),
            events_tx,
            factory.clone(),
            shared.clone(),
            subscriber.clone(),
            publisher.clone(),
        ));
        Ok(Client {
            id: participant.id,
            name: participant.name,
            room,
            participants_at_join: participants,
            join_time: started.elapsed(),
            started_at: started,
            outgoing,
            events: AsyncMutex::new(events),
            shared,
            factory,
            subscriber,
            publisher,
            publish_stats: Arc::new(PublishStats::default()),
            tasks: Mutex::new(vec![writer, reader]),
            media_tasks: Mutex::new(Vec::new()),
        })
    }

    /// Sends a raw text frame (tests use it to send malformed input).
    pub fn send_raw(&self, text: impl Into<String>) {
        let _ = self.outgoing.send(text.into());
    }

    /// Sends a JSON value as a text frame (tests use it to send what the client would not).
    pub fn send_json(&self, value: serde_json::Value) {
        self.send_raw(value.to_string());
    }

    /// Waits for the next server message matching `pred`, skipping others.
    pub async fn wait_for(
        &self,
        what: &'static str,
        timeout: Duration,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage, ClientError> {
        let mut events = self.events.lock().await;
        tokio::time::timeout(timeout, async {
            while let Some(event) = events.recv().await {
                if pred(&event) {
                    return Ok(event);
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout(what))?
    }

    /// Every server message received and not yet consumed.
    pub async fn drain_events(&self) -> Vec<ServerMessage> {
        let mut events = self.events.lock().await;
        let mut out = Vec::new();
        while let Ok(e) = events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Publishes synthetic media; returns once the publisher PC is answered.
    pub async fn publish(&self, options: PublishOptions) -> Result<(), ClientError> {
        let handler = Arc::new(SubscriberEvents {
            outgoing: self.outgoing.clone(),
            shared: self.shared.clone(),
            pc: PcKind::Publisher,
        });
        let pc = self.factory.build(handler).await?;
        let mut senders = Vec::new();
        if options.audio {
            let codec = RTCRtpCodec {
                mime_type: "audio/opus".into(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            };
            senders.push(
                self.add_local_track(&pc, "audio", RtpCodecKind::Audio, codec)
                    .await?,
            );
        }
        if options.video {
            let codec = RTCRtpCodec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            };
            senders.push(
                self.add_local_track(&pc, "video", RtpCodecKind::Video, codec)
                    .await?,
            );
        }
        *self.publisher.lock().await = Some(pc.clone());
        self.offer_publisher(&pc).await?;
        for kind in &options.start_muted {
            let track_id = format!("{}-{kind}", self.id);
            let mute = ClientMessage::Mute {
                track_id: &track_id,
                muted: true,
            };
            self.send_raw(mute.encode());
        }
        // The reader applies the answer; media starts once the transport is up (SRTP has no
        // keys before), like a browser's encoder output.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shared.publisher_connected.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout("publisher connection"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (kind, track, ssrc, payload_type) in senders {
            let stats = self.publish_stats.clone();
            let id = self.id.clone();
            let options = options.clone();
            let task = tokio::spawn(async move {
                if kind == RtpCodecKind::Video {
                    match (options.clip.clone(), options.flood) {
                        (Some(clip), _) => send_clip(track, ssrc, payload_type, clip, stats).await,
                        (None, Some(flood)) => {
                            send_flood(track, ssrc, payload_type, id, flood, stats).await
                        }
                        (None, None) => {
                            send_video(track, ssrc, payload_type, id, options, stats).await
                        }
                    }
                } else {
                    send_audio(track, ssrc, payload_type, id, stats).await
                }
            });
            if let Ok(mut tasks) = self.media_tasks.lock() {
                tasks.push(task);
            }
        }
        Ok(())
    }

    async fn add_local_track(
        &self,
        pc: &Pc,
        label: &str,
        kind: RtpCodecKind,
        codec: RTCRtpCodec,
    ) -> Result<(RtpCodecKind, Arc<TrackLocalStaticRTP>, u32, u8), ClientError> {
        let ssrc = rand::random::<u32>() | 1;
        let track_id = format!("{}-{label}", self.id);
        let mime = codec.mime_type.clone();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            self.id.clone(),
            track_id,
            label.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        )));
        let sender = pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| ClientError::Rtc(e.to_string()))?;
        let params = sender
            .get_parameters()
            .await
            .map_err(|e| ClientError::Rtc(e.to_string()))?;
        let payload_type = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
            .map(|c| c.payload_type)
            .ok_or_else(|| ClientError::Rtc(format!("{mime} not negotiable")))?;
        Ok((kind, track, ssrc, payload_type))
    }

    /// Stops publishing one kind by renegotiating the publisher PC without it.
    pub async fn unpublish(&self, label: &str) -> Result<(), ClientError> {
        let pc = self
            .publisher
            .lock()
            .await
            .clone()
            .ok_or(ClientError::Rtc("nothing published".into()))?;
        let track_id = format!("{}-{label}", self.id);
        for sender in pc.get_senders().await {
            if sender.track().track_id().await == track_id {
                pc.remove_track(&sender)
                    .await
                    .map_err(|e| ClientError::Rtc(e.to_string()))?;
            }
        }
        self.offer_publisher(&pc).await
    }

    /// Offers the publisher PC as it is now; the reader applies the server's answer.
    async fn offer_publisher(&self, pc: &Pc) -> Result<(), ClientError> {
        let offer = pc
            .create_offer(None)
            .await
            .map_err(|e| ClientError::Rtc(e.to_string()))?;
        let sdp = offer.sdp.clone();
        pc.set_local_description(offer)
            .await
            .map_err(|e| ClientError::Rtc(e.to_string()))?;
        let offer = ClientMessage::Offer {
            pc: PcKind::Publisher,
            sdp: &sdp,
        };
        self.send_raw(offer.encode());
        Ok(())
    }

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

    /// The SDP of the last subscriber offer the server sent.
    pub fn last_subscriber_offer(&self) -> Option<String> {
        self.shared
            .last_subscriber_offer
            .lock()
            .ok()
            .and_then(|o| o.clone())
    }

    /// The SDP of the last answer the server gave to this client's publisher offers.
    pub fn last_publisher_answer(&self) -> Option<String> {
        self.shared
            .last_publisher_answer
            .lock()
            .ok()
            .and_then(|o| o.clone())
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

    /// True once the server closed the signaling socket.
    pub fn signaling_closed(&self) -> bool {
        self.shared.signaling_closed.load(Ordering::Acquire)
    }

    /// Stops sending media; the peer connections stay up.
    pub fn stop_publishing(&self) {
        if let Ok(mut tasks) = self.media_tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }

    /// Sends a chat message once the chat channel is open.
    pub async fn chat(&self, text: &str) -> Result<(), ClientError> {
        self.chat_raw(&ChatSend { text }.encode()).await
    }

    pub async fn chat_raw(&self, raw: &str) -> Result<(), ClientError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let channel = self.shared.chat_channel.lock().ok().and_then(|c| c.clone());
            if let Some(channel) = channel {
                if channel.send_text(raw).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(ClientError::Timeout("chat channel"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn chat_received(&self) -> Vec<ChatRelay> {
        self.shared
            .chat
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn chat_errors(&self) -> Vec<String> {
        self.shared
            .chat_errors
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Sends `leave` and closes everything.
    pub async fn leave(self) {
        self.send_raw(ClientMessage::Leave.encode());
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.close().await;
    }

    /// Closes both peer connections but keeps the signaling socket, as a client whose media
    /// died (a crashed media process, say) would.
    pub async fn close_peer_connections(&self) {
        self.stop_publishing();
        for pc in [
            self.subscriber.lock().await.take(),
            self.publisher.lock().await.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = pc.close().await;
        }
    }

    /// Drops the socket and the PCs without a word, like a closed browser tab.
    pub async fn close(self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        self.close_peer_connections().await;
    }
}

type WsStream = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// Reads the socket: negotiation is handled here; everything else goes to `events`.
async fn read_loop(
    mut stream: WsStream,
    outgoing: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedSender<ServerMessage>,
    factory: Arc<PcFactory>,
    shared: Arc<Shared>,
    subscriber: Arc<AsyncMutex<Option<Pc>>>,
    publisher: Arc<AsyncMutex<Option<Pc>>>,
) {
    while let Some(frame) = stream.next().await {
        let Ok(Message::Text(text)) = frame else {
            if matches!(frame, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
            continue;
        };
        let Some(message) = ServerMessage::decode(&text) else {
            continue;
        };
        match message {
            ServerMessage::Offer {
                pc: PcKind::Subscriber,
                sdp,
            } => {
                let mut slot = subscriber.lock().await;
                if slot.is_none() {
                    let handler = Arc::new(SubscriberEvents {
                        outgoing: outgoing.clone(),
                        shared: shared.clone(),
                        pc: PcKind::Subscriber,
                    });
                    match factory.build(handler).await {
                        Ok(pc) => *slot = Some(pc),
                        Err(_) => continue,
                    }
                }
                let Some(pc) = slot.clone() else { continue };
                drop(slot);
                if let Ok(mut last) = shared.last_subscriber_offer.lock() {
                    *last = Some(sdp.clone());
                }
                let Ok(offer) = RTCSessionDescription::offer(sdp) else {
                    continue;
                };
                if pc.set_remote_description(offer).await.is_err() {
                    continue;
                }
                let Ok(answer) = pc.create_answer(None).await else {
                    continue;
                };
                let sdp = answer.sdp.clone();
                if pc.set_local_description(answer).await.is_err() {
                    continue;
                }
                if !shared.answer_delay.is_zero() {
                    tokio::time::sleep(shared.answer_delay).await;
                }
                let answer = ClientMessage::Answer {
                    pc: PcKind::Subscriber,
                    sdp: &sdp,
                };
                let _ = outgoing.send(answer.encode());
            }
            ServerMessage::Answer {
                pc: PcKind::Publisher,
                sdp,
            } => {
                if let Ok(mut last) = shared.last_publisher_answer.lock() {
                    *last = Some(sdp.clone());
                }
                let pc = publisher.lock().await.clone();
                if let (Some(pc), Ok(answer)) = (pc, RTCSessionDescription::answer(sdp)) {
                    let _ = pc.set_remote_description(answer).await;
                }
            }
            ServerMessage::Candidate {
                pc: kind,
                candidate: Some(candidate),
            } => {
                let slot = match kind {
                    PcKind::Subscriber => &subscriber,
                    PcKind::Publisher => &publisher,
                };
                if let Some(pc) = slot.lock().await.clone() {
                    let _ = pc.add_ice_candidate(candidate_to_init(candidate)).await;
                }
            }
            other => {
                let _ = events.send(other);
            }
        }
    }
    shared.signaling_closed.store(true, Ordering::Release);
}

/// Paces VP8-like frames at the configured bitrate and frame rate, split into packets of
/// at most 1100 bytes; keyframes at the interval and on PLI.
async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    publisher_id: String,
    options: PublishOptions,
    stats: Arc<PublishStats>,
) {
    const MAX_PAYLOAD: usize = 1100;
    let (keyframe_wanted, feedback) = watch_keyframe_requests(&track, &stats);
    let frame_rate = options.frame_rate.max(1);
    let frame_bytes = (options.video_bitrate_bps / 8 / frame_rate).max(200) as usize;
    let ts_step = 90_000 / frame_rate;
    let mut interval = tokio::time::interval(Duration::from_secs(1) / frame_rate);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stream = RtpStream::new(ssrc, payload_type);
    let mut timestamp: u32 = rand::random();
    let counter = AtomicU32::new(0);
    let mut last_keyframe = Instant::now();
    let mut payload = Vec::with_capacity(MAX_PAYLOAD + 64);
    loop {
        interval.tick().await;
        let keyframe = keyframe_wanted.swap(false, Ordering::AcqRel)
            || last_keyframe.elapsed() >= options.keyframe_interval;
        if keyframe {
            last_keyframe = Instant::now();
            stats.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        // Keyframes are bigger, as real ones are.
        let size = if keyframe {
            frame_bytes * 3
        } else {
            frame_bytes
        };
        let packets = size.div_ceil(MAX_PAYLOAD).max(1);
        for i in 0..packets {
            payload.clear();
            vp8_prefix(&mut payload, i == 0, keyframe);
            let stamp = Stamp {
                sent_at_micros: unix_micros(),
                publisher_id: publisher_id.clone(),
                counter: counter.fetch_add(1, Ordering::Relaxed),
            };
            write_stamp(&mut payload, &stamp, size.min(MAX_PAYLOAD));
            let packet = stream.packet(
                timestamp,
                i + 1 == packets,
                bytes::Bytes::copy_from_slice(&payload),
            );
            if track.write_rtp(packet).await.is_err() {
                feedback.abort();
                return;
            }
            stats.video_packets.fetch_add(1, Ordering::Relaxed);
        }
        timestamp = timestamp.wrapping_add(ts_step);
    }
}

/// Sends `flood.packets` one-packet frames at `flood.per_second`, in batches every 5 ms.
async fn send_flood(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    publisher_id: String,
    flood: Flood,
    stats: Arc<PublishStats>,
) {
    const TICK: Duration = Duration::from_millis(5);
    let (keyframe_wanted, feedback) = watch_keyframe_requests(&track, &stats);
    let per_tick = (u64::from(flood.per_second) * TICK.as_millis() as u64 / 1000).max(1);
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut stream = RtpStream::new(ssrc, payload_type);
    let mut timestamp: u32 = rand::random();
    let mut payload = Vec::with_capacity(flood.payload_bytes + 64);
    let mut counter = 0u64;
    while counter < flood.packets {
        interval.tick().await;
        for _ in 0..per_tick.min(flood.packets - counter) {
            let keyframe = keyframe_wanted.swap(false, Ordering::AcqRel);
            if keyframe {
                stats.keyframes.fetch_add(1, Ordering::Relaxed);
            }
            payload.clear();
            vp8_prefix(&mut payload, true, keyframe);
            let stamp = Stamp {
                sent_at_micros: unix_micros(),
                publisher_id: publisher_id.clone(),
                counter: counter as u32,
            };
            write_stamp(&mut payload, &stamp, flood.payload_bytes);
            let packet = stream.packet(timestamp, true, bytes::Bytes::copy_from_slice(&payload));
            if track.write_rtp(packet).await.is_err() {
                feedback.abort();
                return;
            }
            stats.video_packets.fetch_add(1, Ordering::Relaxed);
            counter += 1;
            timestamp = timestamp.wrapping_add(90);
        }
    }
    feedback.abort();
}

/// The sequence numbering of one sent RTP stream.
struct RtpStream {
    ssrc: u32,
    payload_type: u8,
    sequence_number: u16,
}

impl RtpStream {
    fn new(ssrc: u32, payload_type: u8) -> Self {
        RtpStream {
            ssrc,
            payload_type,
            sequence_number: rand::random(),
        }
    }

    /// The next packet of the stream.
    fn packet(&mut self, timestamp: u32, marker: bool, payload: bytes::Bytes) -> rtp::Packet {
        let sequence_number = self.sequence_number;
        self.sequence_number = sequence_number.wrapping_add(1);
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker,
                payload_type: self.payload_type,
                sequence_number,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        }
    }
}

/// Watches a sent track's RTCP for keyframe requests.
fn watch_keyframe_requests(
    track: &Arc<TrackLocalStaticRTP>,
    stats: &Arc<PublishStats>,
) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let wanted = Arc::new(AtomicBool::new(true));
    let task = {
        let track = track.clone();
        let wanted = wanted.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                    if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        stats.plis_received.fetch_add(1, Ordering::Relaxed);
                        wanted.store(true, Ordering::Release);
                    }
                }
            }
        })
    };
    (wanted, task)
}

/// Sends a real VP8 clip at its frame rate, looping; a keyframe request skips ahead to the
/// clip's next keyframe.
async fn send_clip(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    clip: Arc<crate::load::clip::Clip>,
    stats: Arc<PublishStats>,
) {
    use rtp::packetizer::Payloader;
    const MTU: usize = 1100;
    let (keyframe_wanted, feedback) = watch_keyframe_requests(&track, &stats);
    let mut payloader = rtp::codec::vp8::Vp8Payloader::default();
    payloader.enable_picture_id = true;
    let frame_rate = clip.frame_rate.max(1);
    let ts_step = 90_000 / frame_rate;
    let mut interval = tokio::time::interval(Duration::from_secs(1) / frame_rate);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stream = RtpStream::new(ssrc, payload_type);
    let mut timestamp: u32 = rand::random();
    let mut index = 0usize;
    loop {
        interval.tick().await;
        if keyframe_wanted.swap(false, Ordering::AcqRel) {
            index = clip.next_keyframe(index);
        }
        let Some(frame) = clip.frames.get(index) else {
            break;
        };
        if frame.keyframe {
            stats.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(payloads) = payloader.payload(MTU, &frame.data) else {
            break;
        };
        let count = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            let packet = stream.packet(timestamp, i + 1 == count, payload);
            if track.write_rtp(packet).await.is_err() {
                feedback.abort();
                return;
            }
            stats.video_packets.fetch_add(1, Ordering::Relaxed);
        }
        timestamp = timestamp.wrapping_add(ts_step);
        index = (index + 1) % clip.frames.len();
    }
    feedback.abort();
}

/// The audio level (−dBov, 0 to 127) the synthetic publisher sends with packet `counter`.
pub fn audio_level_of(counter: u32) -> u8 {
    (counter % 128) as u8
}

/// One Opus-sized packet every 20 ms, with its audio level.
async fn send_audio(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    publisher_id: String,
    stats: Arc<PublishStats>,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stream = RtpStream::new(ssrc, payload_type);
    let mut timestamp: u32 = rand::random();
    let mut counter = 0u32;
    let mut payload = Vec::with_capacity(160);
    loop {
        interval.tick().await;
        payload.clear();
        // An Opus TOC byte for a 20 ms frame, then the stamp.
        payload.push(0x78);
        let stamp = Stamp {
            sent_at_micros: unix_micros(),
            publisher_id: publisher_id.clone(),
            counter,
        };
        counter = counter.wrapping_add(1);
        write_stamp(&mut payload, &stamp, 120);
        let packet = stream.packet(timestamp, false, bytes::Bytes::copy_from_slice(&payload));
        timestamp = timestamp.wrapping_add(960);
        // The level a subscriber should see forwarded (RFC 6464), derived from the counter.
        let level = rtp::extension::HeaderExtension::AudioLevel(
            rtp::extension::audio_level_extension::AudioLevelExtension {
                level: audio_level_of(stamp.counter),
                voice: true,
            },
        );
        if track
            .write_rtp_with_extensions(packet, &[level])
            .await
            .is_err()
        {
            return;
        }
        stats.audio_packets.fetch_add(1, Ordering::Relaxed);
    }
}
