//! DownTrack: one published track as one subscriber receives it.
//!
//! It has its own SSRC, sequence and timestamp space (see `forwarder`), its own bounded queue
//! fed by the Receiver, and its own writer task: awaiting the subscriber's peer connection
//! happens here, where it can only slow this subscriber.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

use crate::media::forwarder::{Decision, Forwarder};
use crate::media::receiver::{DownTrackSink, ForwardedPacket, Receiver};
use crate::metrics::Metrics;
use crate::rtc::is_keyframe_request;
use crate::signal::protocol::TrackKind;

pub struct DownTrack {
    pub receiver: Arc<Receiver>,
    pub sink: Arc<DownTrackSink>,
    pub local: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    /// Payload type negotiated on the subscriber's PC for the publisher's codec.
    payload_type: AtomicU8,
    /// False until the subscriber's transport is up: SRTP cannot protect anything before.
    transport_ready: AtomicBool,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl DownTrack {
    /// Creates the DownTrack and its local track; `start` wires it once it is added to the
    /// subscriber's peer connection.
    pub fn new(
        receiver: Arc<Receiver>,
        subscriber_id: &str,
        queue_packets: usize,
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
        let (sink, rx) = DownTrackSink::new(subscriber_id.to_string(), queue_packets);
        let downtrack = Arc::new(DownTrack {
            receiver,
            sink,
            local,
            ssrc,
            payload_type: AtomicU8::new(0),
            transport_ready: AtomicBool::new(false),
            tasks: std::sync::Mutex::new(Vec::new()),
            metrics,
        });
        (downtrack, rx)
    }

    /// Resolves the payload type from what the subscriber's PC negotiated, starts the writer
    /// and the RTCP reader, and joins the Receiver's fan-out.
    pub async fn start(
        self: &Arc<Self>,
        sender: &Arc<dyn RtpSender>,
        rx: mpsc::Receiver<Arc<ForwardedPacket>>,
    ) {
        self.resolve_payload_type(sender).await;
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
        self.receiver.request_keyframe();
    }

    pub async fn resolve_payload_type(&self, sender: &Arc<dyn RtpSender>) {
        let Ok(params) = sender.get_parameters().await else {
            return;
        };
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
    }

    /// Restarts on the next keyframe: after the subscriber's transport (re)connects, what was
    /// sent before may never have arrived.
    pub fn resync(&self) {
        self.transport_ready.store(true, Ordering::Release);
        self.sink.request_resync();
        self.receiver.request_keyframe();
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
        while let Some(shared) = rx.recv().await {
            if !self.transport_ready.load(Ordering::Acquire) {
                continue;
            }
            if self.sink.take_resync() {
                forwarder.restart();
            }
            let header = &shared.packet.header;
            let decision = forwarder.decide(
                header.ssrc,
                header.sequence_number,
                header.timestamp,
                shared.is_keyframe,
                Instant::now(),
            );
            match decision {
                Decision::Forward(rewritten) => {
                    let payload_type = self.payload_type.load(Ordering::Acquire);
                    if payload_type == 0 {
                        continue;
                    }
                    let mut packet = shared.packet.clone();
                    packet.header.ssrc = self.ssrc;
                    packet.header.payload_type = payload_type;
                    packet.header.sequence_number = rewritten.sequence_number;
                    packet.header.timestamp = rewritten.timestamp;
                    let bytes = packet.payload.len() as u64;
                    if self.local.write_rtp(packet).await.is_err() {
                        forwarder.restart();
                        self.receiver.request_keyframe();
                        continue;
                    }
                    Metrics::add(&self.metrics.packets_out, 1);
                    Metrics::add(&self.metrics.bytes_out, bytes);
                }
                Decision::WaitingForKeyframe => {
                    Metrics::add(&self.metrics.keyframe_waits, 1);
                    self.receiver.request_keyframe();
                }
                Decision::TooOld => {}
            }
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
