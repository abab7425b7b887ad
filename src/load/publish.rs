//! What a client publishes, and how: the publisher peer connection, its tracks and offers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;

use crate::load::client::Client;
use crate::load::clip::Clip;
use crate::load::error::ClientError;
use crate::load::negotiate::PcEvents;
use crate::load::peer::Pc;
use crate::load::senders::{send_audio, send_clip, send_flood, send_video};
use crate::load::wire::{ClientMessage, PcKind};

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
    pub clip: Option<Arc<Clip>>,
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

impl Client {
    /// Publishes synthetic media; returns once the publisher PC is answered.
    pub async fn publish(&self, options: PublishOptions) -> Result<(), ClientError> {
        let handler = Arc::new(PcEvents {
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

    /// Stops sending media; the peer connections stay up.
    pub fn stop_publishing(&self) {
        if let Ok(mut tasks) = self.media_tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}
