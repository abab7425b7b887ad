//! The synthetic media senders: paced VP8-like video (one stream, or one per simulcast layer),
//! a flood of one-packet frames, a real VP8 clip, and Opus-sized audio with its level; each
//! stamped (`payload.rs`) and each sending a keyframe when the server asks for one.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};

use crate::load::clip::Clip;
use crate::load::feedback::is_keyframe_request;
use crate::load::payload::{unix_micros, vp8_prefix, vp8_prefix_with, write_stamp, Stamp};
use crate::load::publish::{Flood, PublishOptions, PublishStats};

/// One video stream a sender paces: a whole track, or one simulcast layer of it.
pub(crate) struct VideoStream {
    pub(crate) ssrc: u32,
    pub(crate) payload_type: u8,
    pub(crate) bitrate_bps: u32,
    /// Set by the keyframe request watcher (and at the start): the next frame is a keyframe.
    pub(crate) keyframe_wanted: Arc<AtomicBool>,
    pub(crate) simulcast: Option<LayerStream>,
}

/// What makes a stream one simulcast layer: its place, its picture size (written in its
/// keyframes' VP8 header), and the header extensions that name it (mid and rid, by their
/// negotiated ids), as a browser's simulcast encoder writes them.
pub(crate) struct LayerStream {
    pub(crate) layer: u8,
    pub(crate) size: (u16, u16),
    pub(crate) extensions: Vec<(u8, bytes::Bytes)>,
}

/// Paces VP8-like frames at the stream's bitrate and the frame rate, split into packets of
/// at most 1100 bytes; keyframes at the interval and when asked for.
pub(crate) async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    video: VideoStream,
    publisher_id: String,
    options: PublishOptions,
    stats: Arc<PublishStats>,
) {
    const MAX_PAYLOAD: usize = 1100;
    let frame_rate = options.frame_rate.max(1);
    let frame_bytes = (video.bitrate_bps / 8 / frame_rate).max(200) as usize;
    let ts_step = 90_000 / frame_rate;
    let mut interval = tokio::time::interval(Duration::from_secs(1) / frame_rate);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stream = RtpStream::new(video.ssrc, video.payload_type);
    let mut timestamp: u32 = rand::random();
    let mut picture_id: u16 = rand::random::<u16>() & 0x7fff;
    let counter = AtomicU32::new(0);
    let layer = video.simulcast.as_ref().map(|s| s.layer);
    let mut last_keyframe = Instant::now();
    let mut payload = Vec::with_capacity(MAX_PAYLOAD + 64);
    loop {
        interval.tick().await;
        let keyframe = video.keyframe_wanted.swap(false, Ordering::AcqRel)
            || last_keyframe.elapsed() >= options.keyframe_interval;
        if keyframe {
            last_keyframe = Instant::now();
            stats.keyframes.fetch_add(1, Ordering::Relaxed);
            if let Some(l) = layer {
                stats.layer_keyframes[usize::from(l)].fetch_add(1, Ordering::Relaxed);
            }
        }
        // Keyframes are bigger, as real ones are.
        let size = if keyframe {
            frame_bytes * 3
        } else {
            frame_bytes
        };
        let packets = size.div_ceil(MAX_PAYLOAD).max(1);
        // Split evenly, as an encoder's packetizer does: the frame is `size` bytes, not a
        // whole number of full packets.
        let packet_bytes = size.div_ceil(packets);
        for i in 0..packets {
            payload.clear();
            match &video.simulcast {
                Some(s) => vp8_prefix_with(
                    &mut payload,
                    i == 0,
                    keyframe,
                    Some(picture_id),
                    Some(s.size),
                ),
                None => vp8_prefix(&mut payload, i == 0, keyframe),
            }
            let stamp = Stamp {
                sent_at_micros: unix_micros(),
                publisher_id: publisher_id.clone(),
                counter: counter.fetch_add(1, Ordering::Relaxed),
                layer,
            };
            write_stamp(&mut payload, &stamp, packet_bytes);
            let mut packet = stream.packet(
                timestamp,
                i + 1 == packets,
                bytes::Bytes::copy_from_slice(&payload),
            );
            if let Some(s) = &video.simulcast {
                for (id, value) in &s.extensions {
                    let _ = packet.header.set_extension(*id, value.clone());
                }
            }
            if track.write_rtp(packet).await.is_err() {
                return;
            }
            stats.video_packets.fetch_add(1, Ordering::Relaxed);
            if let Some(l) = layer {
                stats.layer_packets[usize::from(l)].fetch_add(1, Ordering::Relaxed);
            }
        }
        timestamp = timestamp.wrapping_add(ts_step);
        picture_id = (picture_id + 1) & 0x7fff;
    }
}

/// Sends `flood.packets` one-packet frames at `flood.per_second`, in batches every 5 ms.
pub(crate) async fn send_flood(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    publisher_id: String,
    flood: Flood,
    stats: Arc<PublishStats>,
) {
    const TICK: Duration = Duration::from_millis(5);
    let (wanted, feedback) = watch_keyframe_requests(&track, &stats, &[ssrc]);
    let keyframe_wanted = wanted[0].clone();
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
                layer: None,
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

/// Watches a sent track's RTCP for keyframe requests: one flag per stream of the track
/// (`ssrcs`, its simulcast layers in order), set when a request names that stream's SSRC, and
/// every flag when one names none of them. Every flag starts set: a stream starts on a keyframe.
pub(crate) fn watch_keyframe_requests(
    track: &Arc<TrackLocalStaticRTP>,
    stats: &Arc<PublishStats>,
    ssrcs: &[u32],
) -> (Vec<Arc<AtomicBool>>, JoinHandle<()>) {
    let wanted: Vec<Arc<AtomicBool>> = ssrcs
        .iter()
        .map(|_| Arc::new(AtomicBool::new(true)))
        .collect();
    let task = {
        let track = track.clone();
        let wanted = wanted.clone();
        let ssrcs = ssrcs.to_vec();
        let simulcast = ssrcs.len() > 1;
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                let TrackLocalEvent::OnRtcpPacket(packets) = event else {
                    continue;
                };
                for p in packets.iter().filter(|p| is_keyframe_request(p.as_ref())) {
                    stats.plis_received.fetch_add(1, Ordering::Relaxed);
                    let named: Vec<usize> = p
                        .destination_ssrc()
                        .iter()
                        .filter_map(|s| ssrcs.iter().position(|x| x == s))
                        .collect();
                    for (i, flag) in wanted.iter().enumerate() {
                        if named.is_empty() || named.contains(&i) {
                            flag.store(true, Ordering::Release);
                            if simulcast && !named.is_empty() {
                                stats.layer_plis[i.min(2)].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        })
    };
    (wanted, task)
}

/// Sends a real VP8 clip at its frame rate, looping; a keyframe request skips ahead to the
/// clip's next keyframe.
pub(crate) async fn send_clip(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    clip: Arc<Clip>,
    stats: Arc<PublishStats>,
) {
    use rtp::packetizer::Payloader;
    const MTU: usize = 1100;
    let (wanted, feedback) = watch_keyframe_requests(&track, &stats, &[ssrc]);
    let keyframe_wanted = wanted[0].clone();
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
pub(crate) async fn send_audio(
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
            layer: None,
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
