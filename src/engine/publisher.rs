//! A participant's publisher PC: what a track that starts on it is (its codec, the publisher's
//! extension ids), and the keyframe requests that go to it.

use std::time::Instant;

use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::sansio::Protocol;

use crate::media::extensions::ExtensionIds;
use crate::media::kind::TrackKind;
use crate::media::receiver::{Codec, TrackMeta};

/// What a stream that began on `pc` is: its track's id (from its `msid`, or made from the SSRC
/// when the client gave none), kind, codec and the publisher's extension ids, and which
/// simulcast layer of the track it is. `None` if the stack does not know the receiver or its
/// codec.
pub fn track_meta(
    pc: &mut RTCPeerConnection,
    receiver_id: RTCRtpReceiverId,
    ssrc: u32,
    rid: Option<&str>,
    msid_track_id: String,
    publisher_id: &str,
) -> Option<(TrackMeta, u8)> {
    let mut receiver = pc.rtp_receiver(receiver_id)?;
    let codec = receiver.track().codec(ssrc).cloned()?;
    let layer = rid.map_or(0, |rid| {
        let offered: Vec<&str> = receiver
            .track()
            .codings()
            .iter()
            .map(|c| c.rtp_coding_parameters.rid.as_str())
            .filter(|r| !r.is_empty())
            .collect();
        layer_of(rid, &offered)
    });
    let extensions = ExtensionIds::from_negotiated(
        receiver
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .map(|e| (e.uri.as_str(), e.id)),
    );
    let kind = if codec.mime_type.to_ascii_lowercase().starts_with("audio/") {
        TrackKind::Audio
    } else {
        TrackKind::Video
    };
    let track_id = if msid_track_id.is_empty() {
        format!("{publisher_id}-{ssrc}")
    } else {
        msid_track_id
    };
    let meta = TrackMeta {
        publisher_id: publisher_id.to_string(),
        track_id,
        kind,
        codec: Codec {
            mime_type: codec.mime_type,
            clock_rate: codec.clock_rate,
            channels: codec.channels,
            sdp_fmtp_line: codec.sdp_fmtp_line,
        },
        extensions,
    };
    Some((meta, layer))
}

/// Which layer a simulcast stream is: its place among the rids the offer listed, lowest first
/// (`docs/protocol.md`); failing that, by the names browsers use (`q`, `h`, `f`).
pub fn layer_of(rid: &str, offered: &[&str]) -> u8 {
    if let Some(at) = offered.iter().position(|r| *r == rid) {
        return at.min(2) as u8;
    }
    match rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        _ => 2,
    }
}

/// Asks the publisher for a keyframe of the stream `media_ssrc`; true if it was queued.
pub fn send_pli(pc: &mut RTCPeerConnection, media_ssrc: u32, now: Instant) -> bool {
    let pli = PictureLossIndication {
        sender_ssrc: 0,
        media_ssrc,
    };
    pc.handle_write(TaggedRTCMessage {
        now,
        message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(pli)]),
    })
    .is_ok()
}
