//! SDP from clients: `media_sections` (what the session reads of a publisher offer), then
//! what the media engine does with the same text on a server peer connection built as the
//! server builds them (`PeerSettings::build`): a publisher offer is parsed
//! (`RTCSessionDescription::offer`), set as remote description and answered; a subscriber
//! answer is applied to an offer the server made. Errors are fine; panics are not.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use switchboard::engine::{parse_srtp_profiles, sctp_max_message_for_chat, PeerSettings};
use switchboard::metrics::Metrics;
use switchboard::signal::protocol::PcKind;
use switchboard::signal::sdp::media_sections;

fn settings() -> &'static PeerSettings {
    static SETTINGS: OnceLock<PeerSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        PeerSettings::new(
            vec!["192.0.2.7:7882".parse().expect("address")],
            parse_srtp_profiles("aes128gcm,aes128cm").expect("profiles"),
            Arc::new(Metrics::default()),
            sctp_max_message_for_chat(4096),
        )
        .expect("peer settings")
    })
}

fn check_sections(sdp: &str) {
    let sections = media_sections(sdp);
    let m_lines = sdp
        .lines()
        .filter(|l| l.trim_end().starts_with("m="))
        .count();
    assert_eq!(sections.len(), m_lines);
    for s in sections {
        if s.sending {
            assert!(s.kind == "audio" || s.kind == "video");
        }
        if let Some(t) = s.track_id {
            assert!(!t.is_empty() && !t.contains(char::is_whitespace));
        }
    }
}

fn publisher_offer(sdp: &str, now: Instant) {
    let Ok(mut pc) = settings().build(
        PcKind::Publisher,
        "00fuzzfuzzfuzz",
        "passwordpasswordpassword",
        now,
        None,
    ) else {
        return;
    };
    let answered = RTCSessionDescription::offer(sdp.to_string())
        .and_then(|offer| pc.set_remote_description(now, offer))
        .and_then(|()| pc.create_answer(None))
        .and_then(|answer| pc.set_local_description(now, answer));
    let _ = answered;
    let _ = pc.close();
}

fn subscriber_answer(sdp: &str, now: Instant) {
    let Ok(mut pc) = settings().build(
        PcKind::Subscriber,
        "00fuzzfuzzfuzz",
        "passwordpasswordpassword",
        now,
        None,
    ) else {
        return;
    };
    let _ = pc.create_data_channel("chat", None);
    for (kind, mime, rate, channels) in [
        (RtpCodecKind::Audio, "audio/opus", 48_000, 2),
        (RtpCodecKind::Video, "video/VP8", 90_000, 0),
    ] {
        let track = MediaStreamTrack::new(
            "p1".into(),
            format!("p1-{mime}"),
            format!("p1-{mime}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(0x1000 + rate),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: mime.into(),
                    clock_rate: rate,
                    channels,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback: Vec::new(),
                },
                ..Default::default()
            }],
        );
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let _ = pc.add_transceiver_from_track(track, Some(init));
    }
    let Ok(offer) = pc.create_offer(None) else {
        return;
    };
    if pc.set_local_description(now, offer).is_err() {
        return;
    }
    let _ = RTCSessionDescription::answer(sdp.to_string())
        .and_then(|answer| pc.set_remote_description(now, answer));
    let _ = pc.close();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(sdp) = std::str::from_utf8(rest) else {
        return;
    };
    check_sections(sdp);
    let now = Instant::now();
    if mode & 1 == 0 {
        publisher_offer(sdp, now);
    } else {
        subscriber_answer(sdp, now);
    }
});
