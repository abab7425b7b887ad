//! The publisher PC: the client offers it with send-only transceivers; each track it carries
//! becomes a Receiver published in the room.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tracing::{debug, warn};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
};

use crate::media::extensions::ExtensionIds;
use crate::media::receiver::{Receiver, TrackMeta};
use crate::metrics::Metrics;
use crate::room::{Participant, PublishedTrack, Room};
use crate::rtc::{relay_candidate, PcHandle};
use crate::signal::protocol::{ErrorCode, PcKind, ServerMessage, TrackKind};

pub struct PublisherEvents {
    pub participant: Arc<Participant>,
    pub room: Arc<Room>,
    pub pli_interval: Duration,
    /// Test-only fault injection (see `Config::fault_drop_every_nth_packet`).
    pub fault_drop_every: Option<u32>,
    /// The PC these events are about, set once it is built: `on_track` reads the receiver's
    /// negotiated parameters from it.
    pub pc: OnceLock<Weak<PcHandle>>,
    pub metrics: Arc<Metrics>,
}

impl PublisherEvents {
    /// The publisher's negotiated ids of the extensions forwarded to subscribers, for the
    /// receiver that carries `track`.
    async fn extension_ids(&self, track: &Arc<dyn TrackRemote>) -> ExtensionIds {
        let Some(pc) = self.pc.get().and_then(Weak::upgrade) else {
            return ExtensionIds::default();
        };
        for receiver in pc.get_receivers().await {
            if !Arc::ptr_eq(receiver.track(), track) {
                continue;
            }
            if let Ok(params) = receiver.get_parameters().await {
                return ExtensionIds::from_negotiated(
                    params
                        .rtp_parameters
                        .header_extensions
                        .iter()
                        .map(|e| (e.uri.as_str(), e.id)),
                );
            }
        }
        ExtensionIds::default()
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PublisherEvents {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        relay_candidate(&self.participant, PcKind::Publisher, &event);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(participant = %self.participant.id, pc = "publisher", %state, "connection state");
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(ssrc) = track.ssrcs().await.first().copied() else {
            return;
        };
        let Some(codec) = track.codec(ssrc).await else {
            warn!(participant = %self.participant.id, "track with no codec; ignored");
            return;
        };
        let kind = match track.kind().await {
            RtpCodecKind::Audio => TrackKind::Audio,
            RtpCodecKind::Video => TrackKind::Video,
            _ => return,
        };
        let mut track_id = track.track_id().await;
        if track_id.is_empty() {
            track_id = format!("{}-{ssrc}", self.participant.id);
        }
        let meta = TrackMeta {
            publisher_id: self.participant.id.clone(),
            track_id: track_id.clone(),
            kind,
            codec,
            extensions: self.extension_ids(&track).await,
        };
        let receiver = Receiver::new(meta, self.metrics.clone());
        receiver.set_fault_drop_every(self.fault_drop_every);
        let published = PublishedTrack::new(receiver.clone(), false);
        if let Err(refusal) = self.room.publish(published) {
            self.participant.send(ServerMessage::Error {
                code: refusal.code,
                message: refusal.message,
                request_type: Some("offer".into()),
            });
            return;
        }
        let room = self.room.clone();
        let publisher_id = self.participant.id.clone();
        receiver.spawn(track, self.pli_interval, move || {
            room.unpublish(&publisher_id, &track_id);
        });
    }
}

/// A media section of an SDP, as far as publishing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    pub kind: String,
    pub track_id: Option<String>,
    /// Sends media towards the answerer (sendrecv or sendonly, port not 0).
    pub sending: bool,
}

/// Reads the media sections of an offer without a full SDP parser: enough to count what a
/// publisher sends and to see which tracks it stopped sending.
pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut sections: Vec<MediaSection> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or_default().to_string();
            let port_open = parts.next().is_some_and(|p| p != "0");
            sections.push(MediaSection {
                kind,
                track_id: None,
                sending: port_open,
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            continue;
        };
        if let Some(msid) = line.strip_prefix("a=msid:") {
            section.track_id = msid.split_whitespace().nth(1).map(str::to_string);
        } else if line == "a=recvonly" || line == "a=inactive" {
            section.sending = false;
        }
    }
    sections
        .into_iter()
        .map(|mut s| {
            s.sending &= s.kind == "audio" || s.kind == "video";
            s
        })
        .collect()
}

/// Error reply for a publisher offer.
pub fn offer_error(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error {
        code,
        message,
        request_type: Some("offer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sending_media_sections_and_their_track_ids() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s1 a1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s1 v1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\na=msid:s1 v2\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=msid:s1 v3\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n";
        let sending: Vec<_> = media_sections(sdp)
            .into_iter()
            .filter(|s| s.sending)
            .filter_map(|s| s.track_id)
            .collect();
        assert_eq!(sending, vec!["a1", "v1"]);
        assert_eq!(media_sections(sdp).len(), 5);
        assert!(media_sections("garbage").is_empty());
    }
}
