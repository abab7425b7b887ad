//! What a client publishes, and how: the publisher peer connection, its tracks (video in one
//! stream or in three simulcast layers) and offers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::Track;

use crate::load::client::Client;
use crate::load::clip::Clip;
use crate::load::error::ClientError;
use crate::load::negotiate::PcEvents;
use crate::load::peer::Pc;
use crate::load::senders::{
    send_audio, send_clip, send_flood, send_video, watch_keyframe_requests, LayerStream,
    VideoStream,
};
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
    /// Send the synthetic video as three simulcast layers ([`SIMULCAST_LAYERS`]), each its own
    /// RTP stream named by its rid, as a browser's camera does.
    pub simulcast: bool,
    /// Each layer's bitrate, lowest first; `None`: the layers' shares of `video_bitrate_bps`.
    pub layer_bitrates_bps: Option<[u32; 3]>,
}

/// One simulcast layer the synthetic publisher sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulcastLayer {
    pub rid: &'static str,
    /// The picture size its keyframes announce.
    pub width: u16,
    pub height: u16,
    /// Its bitrate, as a share of the video bitrate.
    pub share: f64,
}

/// The layers, lowest first (the offer lists them in this order, which is what the server
/// goes by): a quarter, half and full size, at 15 %, 30 % and 100 % of the video bitrate.
pub const SIMULCAST_LAYERS: [SimulcastLayer; 3] = [
    SimulcastLayer {
        rid: "q",
        width: 320,
        height: 180,
        share: 0.15,
    },
    SimulcastLayer {
        rid: "h",
        width: 640,
        height: 360,
        share: 0.30,
    },
    SimulcastLayer {
        rid: "f",
        width: 1280,
        height: 720,
        share: 1.0,
    },
];

impl PublishOptions {
    /// The bitrate of simulcast layer `layer`.
    pub fn layer_bitrate(&self, layer: usize) -> u32 {
        match self.layer_bitrates_bps {
            Some(rates) => rates[layer.min(2)],
            None => {
                (f64::from(self.video_bitrate_bps) * SIMULCAST_LAYERS[layer.min(2)].share) as u32
            }
        }
    }
}

/// The header extensions that name a simulcast stream (RFC 8852, RFC 8843).
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

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
            simulcast: false,
            layer_bitrates_bps: None,
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
    /// With simulcast: video packets, keyframes and keyframe requests per layer.
    pub layer_packets: [AtomicU64; 3],
    pub layer_keyframes: [AtomicU64; 3],
    pub layer_plis: [AtomicU64; 3],
}

/// A track on the publisher PC, before media starts on it.
enum Outgoing {
    /// One RTP stream.
    Single {
        kind: RtpCodecKind,
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        payload_type: u8,
    },
    /// A video track in simulcast layers, lowest first, one SSRC each.
    Simulcast {
        track: Arc<TrackLocalStaticRTP>,
        ssrcs: [u32; 3],
        payload_type: u8,
    },
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
            let synthetic = options.clip.is_none() && options.flood.is_none();
            senders.push(if options.simulcast && synthetic {
                self.add_simulcast_track(&pc, codec).await?
            } else {
                self.add_local_track(&pc, "video", RtpCodecKind::Video, codec)
                    .await?
            });
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
        let mut tasks = Vec::new();
        for outgoing in senders {
            let stats = self.publish_stats.clone();
            let id = self.id.clone();
            let options = options.clone();
            match outgoing {
                Outgoing::Single {
                    kind: RtpCodecKind::Video,
                    track,
                    ssrc,
                    payload_type,
                } => tasks.push(tokio::spawn(async move {
                    match (options.clip.clone(), options.flood) {
                        (Some(clip), _) => send_clip(track, ssrc, payload_type, clip, stats).await,
                        (None, Some(flood)) => {
                            send_flood(track, ssrc, payload_type, id, flood, stats).await
                        }
                        (None, None) => {
                            let (wanted, feedback) =
                                watch_keyframe_requests(&track, &stats, &[ssrc]);
                            let video = VideoStream {
                                ssrc,
                                payload_type,
                                bitrate_bps: options.video_bitrate_bps,
                                keyframe_wanted: wanted[0].clone(),
                                simulcast: None,
                            };
                            send_video(track, video, id, options, stats).await;
                            feedback.abort();
                        }
                    }
                })),
                Outgoing::Single {
                    track,
                    ssrc,
                    payload_type,
                    ..
                } => tasks.push(tokio::spawn(async move {
                    send_audio(track, ssrc, payload_type, id, stats).await
                })),
                Outgoing::Simulcast {
                    track,
                    ssrcs,
                    payload_type,
                } => {
                    let names = match simulcast_names(&pc, &track).await {
                        Ok(names) => names,
                        Err(e) => {
                            tasks.iter().for_each(JoinHandle::abort);
                            return Err(e);
                        }
                    };
                    let (wanted, feedback) = watch_keyframe_requests(&track, &stats, &ssrcs);
                    tasks.push(feedback);
                    let layers = ssrcs.into_iter().zip(wanted).enumerate();
                    for (layer, (ssrc, keyframe_wanted)) in layers {
                        let spec = SIMULCAST_LAYERS[layer];
                        let video = VideoStream {
                            ssrc,
                            payload_type,
                            bitrate_bps: options.layer_bitrate(layer),
                            keyframe_wanted,
                            simulcast: Some(LayerStream {
                                layer: layer as u8,
                                size: (spec.width, spec.height),
                                extensions: names.of(spec.rid),
                            }),
                        };
                        let (track, id, stats, options) =
                            (track.clone(), id.clone(), stats.clone(), options.clone());
                        tasks.push(tokio::spawn(send_video(track, video, id, options, stats)));
                    }
                }
            }
        }
        if let Ok(mut media_tasks) = self.media_tasks.lock() {
            media_tasks.extend(tasks);
        }
        Ok(())
    }

    async fn add_local_track(
        &self,
        pc: &Pc,
        label: &str,
        kind: RtpCodecKind,
        codec: RTCRtpCodec,
    ) -> Result<Outgoing, ClientError> {
        let ssrc = rand::random::<u32>() | 1;
        let coding = RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec.clone(),
            ..Default::default()
        };
        let (track, payload_type) = self
            .add_track_with(pc, label, kind, &codec, vec![coding])
            .await?;
        Ok(Outgoing::Single {
            kind,
            track,
            ssrc,
            payload_type,
        })
    }

    /// The video track in three layers: one coding per layer, each with its rid and SSRC, so
    /// the offer lists `a=rid:q send`, `h`, `f` and `a=simulcast:send q;h;f`, lowest first.
    async fn add_simulcast_track(
        &self,
        pc: &Pc,
        codec: RTCRtpCodec,
    ) -> Result<Outgoing, ClientError> {
        let ssrcs: [u32; 3] = std::array::from_fn(|_| rand::random::<u32>() | 1);
        let codings = SIMULCAST_LAYERS
            .iter()
            .zip(ssrcs)
            .map(|(layer, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: layer.rid.to_string(),
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            })
            .collect();
        let (track, payload_type) = self
            .add_track_with(pc, "video", RtpCodecKind::Video, &codec, codings)
            .await?;
        Ok(Outgoing::Simulcast {
            track,
            ssrcs,
            payload_type,
        })
    }

    async fn add_track_with(
        &self,
        pc: &Pc,
        label: &str,
        kind: RtpCodecKind,
        codec: &RTCRtpCodec,
        codings: Vec<RTCRtpEncodingParameters>,
    ) -> Result<(Arc<TrackLocalStaticRTP>, u8), ClientError> {
        let track_id = format!("{}-{label}", self.id);
        let mime = codec.mime_type.clone();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            self.id.clone(),
            track_id,
            label.to_string(),
            kind,
            codings,
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
        Ok((track, payload_type))
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

/// How a simulcast track's packets name their stream: the transceiver's mid and the
/// negotiated ids of the mid and rid header extensions. The server's stack maps a simulcast
/// stream's SSRC to its layer by them, as the offer carries no SSRCs for the layers.
struct SimulcastNames {
    mid_id: u8,
    mid: bytes::Bytes,
    rid_id: u8,
}

impl SimulcastNames {
    /// The header extensions of the layer `rid`.
    fn of(&self, rid: &'static str) -> Vec<(u8, bytes::Bytes)> {
        vec![
            (self.mid_id, self.mid.clone()),
            (self.rid_id, bytes::Bytes::from_static(rid.as_bytes())),
        ]
    }
}

/// Reads [`SimulcastNames`] off the negotiated publisher PC.
async fn simulcast_names(
    pc: &Pc,
    track: &Arc<TrackLocalStaticRTP>,
) -> Result<SimulcastNames, ClientError> {
    let rtc = |e: webrtc::error::Error| ClientError::Rtc(e.to_string());
    let track_id = track.track_id().await;
    for transceiver in pc.get_transceivers().await {
        let Some(sender) = transceiver.sender().await.map_err(rtc)? else {
            continue;
        };
        if sender.track().track_id().await != track_id {
            continue;
        }
        let mid = transceiver
            .mid()
            .await
            .map_err(rtc)?
            .ok_or_else(|| ClientError::Rtc("simulcast track without a mid".into()))?;
        let params = sender.get_parameters().await.map_err(rtc)?;
        let id_of = |uri: &str| {
            params
                .rtp_parameters
                .header_extensions
                .iter()
                .find(|e| e.uri == uri)
                .and_then(|e| u8::try_from(e.id).ok())
                .ok_or_else(|| ClientError::Rtc(format!("simulcast: {uri} not negotiated")))
        };
        return Ok(SimulcastNames {
            mid_id: id_of(MID_URI)?,
            mid: bytes::Bytes::from(mid.into_bytes()),
            rid_id: id_of(RID_URI)?,
        });
    }
    Err(ClientError::Rtc("simulcast track has no sender".into()))
}
