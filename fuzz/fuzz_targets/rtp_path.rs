//! The data plane's per-packet path on arbitrary RTP: `rtp::Packet` unmarshal of any bytes,
//! `Receiver::incoming` (keyframe detection for every codec, header extensions read by the
//! publisher's ids), `DownTrack::forward` (gating, rewriting, the header and the subscriber's
//! extensions marshalled into the send buffer as the worker sends it), the result parsed back;
//! keyframe requests coalesced in time.
//!
//! What must hold: nothing panics on any input; a forwarded packet parses back with the
//! publisher's payload, the subscriber's SSRC and payload type and its MID;
//! `is_keyframe` agrees with `VideoCodec::is_keyframe`; a keyframe request never goes sooner
//! than the coalescing allows.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rtc::shared::marshal::Unmarshal;
use switchboard::media::downtrack::{DownTrack, Negotiated, Outcome};
use switchboard::media::extensions::{
    ExtensionIds, SubscriberExtensions, ABS_SEND_TIME, AUDIO_LEVEL, PLAYOUT_DELAY,
    VIDEO_ORIENTATION,
};
use switchboard::media::keyframe::VideoCodec;
use switchboard::media::receiver::{Codec, KeyframeRequest, Receiver, TrackMeta, URGENT_PLI_GAP};
use switchboard::media::kind::TrackKind;

const CODECS: [(&str, TrackKind, u32); 6] = [
    ("video/VP8", TrackKind::Video, 90_000),
    ("video/VP9", TrackKind::Video, 90_000),
    ("video/H264", TrackKind::Video, 90_000),
    ("video/AV1", TrackKind::Video, 90_000),
    ("video/H265", TrackKind::Video, 90_000),
    ("audio/opus", TrackKind::Audio, 48_000),
];

/// Negotiated ids, as one SDP gives them: each id names one URI at most (0: not negotiated).
/// Ids up to 255 (two-byte form) now and then.
fn ids(bytes: &[u8], taken: &mut Vec<u16>) -> ExtensionIds {
    let uris = [AUDIO_LEVEL, ABS_SEND_TIME, VIDEO_ORIENTATION, PLAYOUT_DELAY];
    let mut negotiated = Vec::new();
    for (uri, &b) in uris.iter().zip(bytes) {
        let id = if b & 0x80 != 0 {
            u16::from(b)
        } else {
            u16::from(b % 16)
        };
        if id != 0 && !taken.contains(&id) {
            taken.push(id);
            negotiated.push((*uri, id));
        }
    }
    ExtensionIds::from_negotiated(negotiated)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    // Every codec's keyframe check on the raw input.
    for codec in [
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::H264,
        VideoCodec::Av1,
    ] {
        let _ = codec.is_keyframe(data);
    }
    let (mime, kind, clock_rate) = CODECS[usize::from(data[0]) % CODECS.len()];
    let publisher_ids = ids(&data[1..5], &mut Vec::new());
    let mid_id = u16::from(data[6] % 16);
    let mut taken = vec![mid_id];
    let subscriber = SubscriberExtensions::new(ids(&data[7..11], &mut taken), Some(mid_id), "7");
    let meta = TrackMeta {
        publisher_id: "p".into(),
        track_id: "t".into(),
        kind,
        codec: Codec {
            mime_type: mime.into(),
            clock_rate,
            channels: 0,
            sdp_fmtp_line: String::new(),
        },
        extensions: publisher_ids,
    };
    let mut receiver = Receiver::new(meta, 0x1234, Duration::from_millis(500));
    let video = receiver.is_video();
    let mut downtrack = DownTrack::new(0xabcd, video, clock_rate, Duration::from_millis(200), 9, 9);
    downtrack.set_negotiated(Negotiated {
        payload_type: 102,
        extensions: subscriber,
    });
    downtrack.transport_up();
    let t0 = Instant::now();
    let mut now = t0;
    let mut last_pli: Option<Instant> = None;
    let mut rest = &data[12..];
    // Records: [length][time step][request keyframe?][bytes...]
    while rest.len() >= 3 {
        let len = usize::from(rest[0]).min(rest.len() - 3);
        now += Duration::from_millis(u64::from(rest[1]));
        let ask = rest[2];
        let bytes = Bytes::copy_from_slice(&rest[3..3 + len]);
        rest = &rest[3 + len..];
        if ask & 0x80 != 0 {
            match receiver.request_keyframe(now, ask & 1 != 0) {
                KeyframeRequest::SendNow => {
                    assert!(video);
                    if let Some(at) = last_pli {
                        assert!(now.duration_since(at) >= URGENT_PLI_GAP, "PLIs too close");
                    }
                    last_pli = Some(now);
                }
                KeyframeRequest::At(at) => assert!(at > now && video),
                KeyframeRequest::Nothing => assert!(!video),
            }
        }
        if receiver.keyframe_due(now) {
            if let Some(at) = last_pli {
                assert!(now.duration_since(at) >= URGENT_PLI_GAP, "PLIs too close");
            }
            last_pli = Some(now);
        }
        let Ok(packet) = rtp::Packet::unmarshal(&mut bytes.clone()) else {
            continue;
        };
        let arrived = now
            .checked_sub(Duration::from_millis(u64::from(ask & 0x7f) * 4))
            .unwrap_or(now);
        let Some(incoming) = receiver.incoming(&packet, arrived) else {
            assert!(packet.payload.is_empty());
            continue;
        };
        let codec = VideoCodec::from_mime(mime);
        assert_eq!(
            incoming.is_keyframe,
            !video || codec.is_keyframe(&packet.payload)
        );
        let mut buf = bytes::BytesMut::new();
        match downtrack.forward(&incoming, now, 0x1234_5678_9abc_def0, &mut buf) {
            Outcome::Send(shape) => {
                let out = rtp::Packet::unmarshal(&mut &buf[..]).expect("a forwarded packet parses");
                assert_eq!(buf.len() - shape.header_len, packet.payload.len());
                assert_eq!(out.header.ssrc, 0xabcd);
                assert_eq!(out.header.payload_type, 102);
                assert_eq!(out.header.marker, packet.header.marker);
                assert_eq!(out.payload, packet.payload);
                if mid_id != 0 {
                    assert_eq!(
                        out.header.get_extension(mid_id as u8).as_deref(),
                        Some(&b"7"[..])
                    );
                }
            }
            Outcome::Drop { .. } => {}
        }
    }
});
