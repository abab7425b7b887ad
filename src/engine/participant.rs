//! A participant as its worker holds it: its two peer connections, the negotiation of what its
//! subscriber PC carries, its chat channel, and the maps from SSRCs to the Router's Receivers
//! and DownTracks. Plus what it takes to put a forwarded track on a subscriber PC and read
//! back what the answer settled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit,
};

use crate::engine::chat::ChatChannel;
use crate::engine::negotiation::Negotiation;
use crate::engine::router::Router;
use crate::media::downtrack::Negotiated;
use crate::media::extensions::{self, ExtensionIds, SubscriberExtensions};
use crate::media::kind::TrackKind;
use crate::media::quality::QualityMeter;
use crate::media::receiver::{Codec, TrackMeta};

/// A track forwarded to this participant: its DownTrack and its m-line.
pub struct Forwarded {
    pub downtrack: usize,
    pub sender: RTCRtpSenderId,
    pub transceiver: RTCRtpTransceiverId,
}

pub struct Participant {
    pub id: String,
    pub room: Arc<str>,
    pub publisher: Option<usize>,
    pub subscriber: usize,
    pub negotiation: Negotiation<Forwarded>,
    pub chat: ChatChannel,
    /// The publisher's SSRCs: each one's track and simulcast layer, or `None` for a track not
    /// forwarded (the room refused it, or it was unpublished).
    pub receivers_by_ssrc: HashMap<u32, Option<(usize, u8)>>,
    /// Our DownTrack SSRCs on its subscriber PC.
    pub downtracks_by_ssrc: HashMap<u32, usize>,
    pub joined_at: Instant,
    /// Its media was reported lost: once is enough.
    pub lost: bool,
    /// Its connection quality as announced to its room.
    pub quality: QualityMeter,
    /// It has been told the qualities announced before it came.
    pub quality_told: bool,
}

impl Participant {
    /// Why its media path counts as dead while its signaling lives on (a frozen process, a
    /// network that changed), if it does: it answered the subscriber offer but that connection
    /// never came up, or its publisher connection (made at `publisher_unconnected_since`) never
    /// did, or every unmuted track it publishes fell silent, for `timeout`. A client that never
    /// answers only watches signaling: it is left be.
    #[allow(clippy::too_many_arguments)]
    pub fn ghost(
        &self,
        key: usize,
        subscriber_connected: bool,
        publisher_unconnected_since: Option<Instant>,
        router: &Router,
        now: Instant,
        timeout: Duration,
    ) -> Option<&'static str> {
        if self.lost {
            return None;
        }
        if publisher_unconnected_since
            .is_some_and(|since| now.saturating_duration_since(since) > timeout)
        {
            return Some("publisher connection never connected");
        }
        if self.negotiation.was_answered()
            && !subscriber_connected
            && now.saturating_duration_since(self.joined_at) > timeout
        {
            return Some("media never connected");
        }
        let (mut live, mut silent) = (0, 0);
        for (_, r) in router.published_by(key).filter(|(_, r)| !r.muted) {
            if now.saturating_duration_since(r.last_packet) > timeout {
                silent += 1;
            } else {
                live += 1;
            }
        }
        (silent > 0 && live == 0).then_some("media stopped")
    }

    pub fn new(id: String, room: Arc<str>, subscriber: usize, now: Instant) -> Self {
        Participant {
            id,
            room,
            publisher: None,
            subscriber,
            negotiation: Negotiation::default(),
            chat: ChatChannel::default(),
            receivers_by_ssrc: HashMap::new(),
            downtracks_by_ssrc: HashMap::new(),
            joined_at: now,
            lost: false,
            quality: QualityMeter::default(),
            quality_told: false,
        }
    }
}

/// Puts a published track on a subscriber PC: a send-only m-line with the DownTrack's own
/// SSRC, announced as `msid:<publisher id> <track id>`.
pub fn add_transceiver(
    pc: &mut RTCPeerConnection,
    meta: &TrackMeta,
    ssrc: u32,
) -> rtc::shared::error::Result<RTCRtpTransceiverId> {
    let kind = match meta.kind {
        TrackKind::Audio => RtpCodecKind::Audio,
        TrackKind::Video => RtpCodecKind::Video,
    };
    let track = MediaStreamTrack::new(
        meta.publisher_id.clone(),
        meta.track_id.clone(),
        meta.track_id.clone(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: meta.codec.mime_type.clone(),
                clock_rate: meta.codec.clock_rate,
                channels: meta.codec.channels,
                sdp_fmtp_line: meta.codec.sdp_fmtp_line.clone(),
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
    pc.add_transceiver_from_track(track, Some(init))
}

/// What the subscriber's answer settled for one forwarded m-line: the payload type of the
/// publisher's codec and the extension ids, or `None` if it refused the m-line.
pub fn negotiated_for(
    pc: &mut RTCPeerConnection,
    f: &Forwarded,
    codec: &Codec,
) -> Option<Negotiated> {
    let mid = pc
        .rtp_transceiver(f.transceiver)
        .and_then(|t| t.mid().clone())
        .unwrap_or_default();
    let mut sender = pc.rtp_sender(f.sender)?;
    let params = sender.get_parameters();
    let codecs = &params.rtp_parameters.codecs;
    let same_mime =
        |c: &&RTCRtpCodecParameters| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type);
    let found = codecs
        .iter()
        .filter(same_mime)
        .find(|c| {
            codec.sdp_fmtp_line.is_empty() || c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line
        })
        .or_else(|| codecs.iter().find(same_mime))?;
    let negotiated_extensions = &params.rtp_parameters.header_extensions;
    let id_of = |uri: &str| {
        negotiated_extensions
            .iter()
            .find(|e| e.uri == uri)
            .map(|e| e.id)
    };
    let mid_id = id_of(extensions::SDES_MID);
    let transport_cc_id = id_of(extensions::TRANSPORT_CC);
    Some(Negotiated {
        payload_type: found.payload_type,
        extensions: SubscriberExtensions::new(
            ExtensionIds::from_negotiated(
                negotiated_extensions.iter().map(|e| (e.uri.as_str(), e.id)),
            ),
            mid_id,
            &mid,
        )
        .with_transport_cc(transport_cc_id),
    })
}
