//! DownTrack: one published track as one subscriber receives it.
//!
//! It has its own SSRC, sequence and timestamp space (see `forwarder`), its own bounded queue
//! fed by the Receiver, and its own writer task: awaiting the subscriber's peer connection
//! happens here, where it can only slow this subscriber.
//!
//! Nothing is sent before the subscriber has accepted the m-line in an answer: until then it
//! cannot know the payload type, and a client may route an unknown SSRC to the wrong
//! receiver. The queue is bounded in time as well as in packets: a conference prefers a
//! dropped packet and a keyframe to seconds of delay.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, Instrument};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::rtp_transceiver::RtpSender;

use crate::media::extensions::{self, ExtensionIds, SubscriberExtensions};
use crate::media::forwarder::{Decision, Forwarder, Refused};
use crate::media::receiver::{DownTrackSink, ForwardedPacket, Receiver};
use crate::metrics::Metrics;
use crate::rtc::is_keyframe_request;
use crate::signal::protocol::TrackKind;

/// How much a DownTrack's queue may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub packets: usize,
    pub audio_age: Duration,
    pub video_age: Duration,
}

pub struct DownTrack {
    pub receiver: Arc<Receiver>,
    pub sink: Arc<DownTrackSink>,
    pub local: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    /// Payload type negotiated on the subscriber's PC for the publisher's codec.
    payload_type: AtomicU8,
    /// The subscriber's MID and extension ids for this m-line.
    extensions: ArcSwap<SubscriberExtensions>,
    /// False until the subscriber's answer accepted this m-line.
    negotiated: AtomicBool,
    /// False until the subscriber's transport is up: SRTP cannot protect anything before.
    transport_ready: AtomicBool,
    /// Packets that waited longer than this in the queue are dropped.
    max_age: Duration,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl DownTrack {
    /// Creates the DownTrack and its local track; `start` wires it once it is added to the
    /// subscriber's peer connection.
    pub fn new(
        receiver: Arc<Receiver>,
        subscriber_id: &str,
        queue: QueueLimits,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::Receiver<Arc<ForwardedPacket>>) {
        Metrics::inc(&metrics.downtracks);
        let ssrc = rand::random::<u32>() | 1;
        let meta = &receiver.meta;
        let kind = match meta.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        // The stream id is the publisher's participant id: the client maps a remote stream to
        // a participant by it (`a=msid:<participant id> <track id>`).
        let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            meta.publisher_id.clone(),
            meta.track_id.clone(),
            meta.track_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: meta.codec.clone(),
                ..Default::default()
            }],
        )));
        let (sink, rx) = DownTrackSink::new(subscriber_id.to_string(), queue.packets);
        let max_age = match meta.kind {
            TrackKind::Audio => queue.audio_age,
            TrackKind::Video => queue.video_age,
        };
        let downtrack = Arc::new(DownTrack {
            receiver,
            sink,
            local,
            ssrc,
            payload_type: AtomicU8::new(0),
            extensions: ArcSwap::from_pointee(SubscriberExtensions::default()),
            negotiated: AtomicBool::new(false),
            transport_ready: AtomicBool::new(false),
            max_age,
            tasks: std::sync::Mutex::new(Vec::new()),
            metrics,
        });
        (downtrack, rx)
    }

    /// Starts the writer and the RTCP reader, and joins the Receiver's fan-out. Packets are
    /// dropped until [`DownTrack::negotiated`].
    pub fn start(self: &Arc<Self>, rx: mpsc::Receiver<Arc<ForwardedPacket>>) {
        let span = tracing::info_span!(
            "downtrack",
            subscriber = %self.sink.subscriber_id,
            publisher = %self.receiver.meta.publisher_id,
            track = %self.receiver.meta.track_id
        );
        let writer = tokio::spawn(self.clone().write_loop(rx).instrument(span.clone()));
        let feedback = tokio::spawn(self.clone().read_feedback().instrument(span));
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(writer);
            tasks.push(feedback);
        }
        self.receiver.add_sink(self.sink.clone());
    }

    /// The subscriber's answer accepted this m-line (`mid`): takes the payload type and
    /// extension ids it negotiated and starts sending on the next keyframe.
    pub async fn negotiated(&self, sender: &Arc<dyn RtpSender>, mid: &str) {
        let Ok(params) = sender.get_parameters().await else {
            return;
        };
        let negotiated = params
            .rtp_parameters
            .header_extensions
            .iter()
            .map(|e| (e.uri.as_str(), e.id));
        let mid_id = params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == extensions::SDES_MID)
            .map(|e| e.id);
        self.extensions.store(Arc::new(SubscriberExtensions::new(
            ExtensionIds::from_negotiated(negotiated),
            mid_id,
            mid,
        )));
        let wanted = &self.receiver.meta.codec;
        let found = params.rtp_parameters.codecs.iter().find(|c| {
            c.rtp_codec
                .mime_type
                .eq_ignore_ascii_case(&wanted.mime_type)
                && (wanted.sdp_fmtp_line.is_empty()
                    || c.rtp_codec.sdp_fmtp_line == wanted.sdp_fmtp_line)
        });
        let found = found.or_else(|| {
            params.rtp_parameters.codecs.iter().find(|c| {
                c.rtp_codec
                    .mime_type
                    .eq_ignore_ascii_case(&wanted.mime_type)
            })
        });
        if let Some(codec) = found {
            self.payload_type
                .store(codec.payload_type, Ordering::Release);
        }
        if !self.negotiated.swap(true, Ordering::AcqRel) {
            self.sink.request_resync();
            self.receiver.request_keyframe_now();
        }
    }

    /// Restarts on the next keyframe: after the subscriber's transport (re)connects, what was
    /// sent before may never have arrived.
    pub fn resync(&self) {
        self.transport_ready.store(true, Ordering::Release);
        self.sink.request_resync();
        self.receiver.request_keyframe_now();
    }

    /// Stops the tasks. Must run before the track is removed from its peer connection: the
    /// RTCP reader holds the track's event lock, which removal takes.
    pub fn stop(&self) {
        self.receiver.remove_sink(&self.sink);
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }

    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Arc<ForwardedPacket>>) {
        let meta = &self.receiver.meta;
        let mut forwarder = Forwarder::new(
            self.receiver.is_video(),
            meta.codec.clock_rate,
            rand::random(),
            rand::random(),
        );
        let dropped = &self.metrics.dropped;
        while let Some(shared) = rx.recv().await {
            if !self.transport_ready.load(Ordering::Acquire)
                || !self.negotiated.load(Ordering::Acquire)
            {
                Metrics::add(&dropped.not_negotiated, 1);
                continue;
            }
            if self.sink.take_resync() {
                forwarder.restart();
            }
            let header = &shared.packet.header;
            let decision = forwarder.decide_queued(
                header.ssrc,
                header.sequence_number,
                header.timestamp,
                shared.is_keyframe,
                shared.arrived,
                Instant::now(),
                self.max_age,
            );
            let rewritten = match decision {
                Decision::Forward(rewritten) => rewritten,
                Decision::Refuse(why) => {
                    Metrics::add(dropped.refused(why), 1);
                    if matches!(why, Refused::WaitingForKeyframe | Refused::Expired) {
                        self.receiver.request_keyframe();
                    }
                    continue;
                }
            };
            let payload_type = self.payload_type.load(Ordering::Acquire);
            let mut packet = shared.packet.clone();
            packet.header.ssrc = self.ssrc;
            packet.header.payload_type = payload_type;
            packet.header.sequence_number = rewritten.sequence_number;
            packet.header.timestamp = rewritten.timestamp;
            self.extensions.load().write(
                &mut packet.header,
                &shared.carried,
                extensions::ntp_now(),
            );
            let bytes = packet.payload.len() as u64;
            if self.local.write_rtp(packet).await.is_err() {
                forwarder.restart();
                self.receiver.request_keyframe();
                continue;
            }
            Metrics::add(&self.metrics.packets_out, 1);
            Metrics::add(&self.metrics.bytes_out, bytes);
        }
        debug!(dropped = self.sink.dropped(), "downtrack writer ended");
    }

    /// Relays the subscriber's keyframe requests to the Receiver, which rate-limits them.
    async fn read_feedback(self: Arc<Self>) {
        while let Some(event) = self.local.poll().await {
            let TrackLocalEvent::OnRtcpPacket(packets) = event else {
                continue;
            };
            if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                Metrics::add(&self.metrics.keyframe_requests_received, 1);
                self.receiver.request_keyframe();
            }
        }
    }
}

impl Drop for DownTrack {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.downtracks);
    }
}
