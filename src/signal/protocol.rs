//! The serde types of the signaling protocol (`docs/protocol.md`).
//!
//! Client messages are decoded in two steps, so that a bad message gets the most precise
//! error: first the frame must be a JSON object with a string `type` (else `bad_request`),
//! then the `type` must be known (else `unknown_type`), then its fields must fit (else
//! `bad_request` naming the field).

use serde::{Deserialize, Serialize};

use crate::config::IceServer;
pub use crate::engine::PcKind;
pub use crate::media::kind::TrackKind;
pub use crate::media::quality::Quality;
pub use crate::room::{ParticipantInfo, ParticipantState, TrackInfo};

/// An ICE candidate as the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Join {
        room: String,
        name: String,
        #[serde(default)]
        token: Option<String>,
    },
    Offer {
        pc: PcKind,
        sdp: String,
    },
    Answer {
        pc: PcKind,
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        /// `null` marks the end of candidates.
        candidate: Option<Candidate>,
    },
    Mute {
        track_id: String,
        muted: bool,
    },
    /// How this client shows a track it receives: its size in device pixels (0 × 0 unknown),
    /// or not at all.
    Subscription {
        track_id: String,
        #[serde(default = "yes")]
        enabled: bool,
        #[serde(default)]
        width: u32,
        #[serde(default)]
        height: u32,
    },
    Leave,
    Ping,
}

fn yes() -> bool {
    true
}

/// Every `type` a client may send, for telling `unknown_type` from `bad_request`.
pub const CLIENT_TYPES: &[&str] = &[
    "join",
    "offer",
    "answer",
    "candidate",
    "mute",
    "subscription",
    "leave",
    "ping",
];

/// Error codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    NotJoined,
    AlreadyJoined,
    InvalidRoom,
    InvalidName,
    Unauthorized,
    RoomFull,
    InvalidSdp,
    TooLarge,
    RateLimited,
    Internal,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        room: String,
        participant: ParticipantInfo,
        participants: Vec<ParticipantState>,
        ice_servers: Vec<IceServerInfo>,
    },
    Offer {
        pc: PcKind,
        sdp: String,
    },
    Answer {
        pc: PcKind,
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        candidate: Option<Candidate>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
    },
    TrackPublished {
        participant_id: String,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: String,
        track_id: String,
    },
    TrackMuted {
        participant_id: String,
        track_id: String,
        muted: bool,
    },
    /// The simulcast layers of a track this client publishes that anyone needs now.
    Layers {
        track_id: String,
        active: Vec<String>,
    },
    /// Who speaks, loudest first (`[]`: nobody).
    Speakers {
        speakers: Vec<SpeakerInfo>,
    },
    /// The server's view of a participant's connection (this client's own, or another's).
    Quality {
        participant_id: String,
        quality: Quality,
    },
    /// Not in the shared protocol (clients may ignore it): a track this client receives was
    /// paused because not even its lowest layer fits the client's bandwidth, or resumed.
    TrackPaused {
        participant_id: String,
        track_id: String,
        paused: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_type: Option<String>,
    },
    Pong,
}

/// One entry of `speakers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub participant_id: String,
    /// 0–1, louder higher.
    pub level: f32,
}

/// `ice_servers` entry of `joined`, shaped for `RTCPeerConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServerInfo {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl From<&IceServer> for IceServerInfo {
    fn from(s: &IceServer) -> Self {
        IceServerInfo {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        }
    }
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    /// The `type` of the frame, when it had one.
    pub request_type: Option<String>,
}

/// Decodes one client text frame.
pub fn decode_client(text: &str) -> Result<ClientMessage, DecodeError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DecodeError {
        code: ErrorCode::BadRequest,
        message: format!("not valid JSON: {e}"),
        request_type: None,
    })?;
    let Some(ty) = value.get("type").and_then(|t| t.as_str()) else {
        return Err(DecodeError {
            code: ErrorCode::BadRequest,
            message: "a message must be a JSON object with a string field `type`".into(),
            request_type: None,
        });
    };
    let ty = ty.to_string();
    if !CLIENT_TYPES.contains(&ty.as_str()) {
        return Err(DecodeError {
            code: ErrorCode::UnknownType,
            message: format!("unknown message type {ty:?}"),
            request_type: Some(ty),
        });
    }
    serde_json::from_value(value).map_err(|e| DecodeError {
        code: ErrorCode::BadRequest,
        message: format!("bad {ty:?} message: {e}"),
        request_type: Some(ty),
    })
}

/// A chat message as relayed to the other participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRelay {
    #[serde(rename = "type")]
    pub kind: String,
    pub from: ParticipantInfo,
    pub text: String,
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_known_messages_and_ignores_unknown_fields() {
        let m = decode_client(r#"{"type":"join","room":"r1","name":"Al","extra":1}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                room: "r1".into(),
                name: "Al".into(),
                token: None
            }
        );
        let m =
            decode_client(r#"{"type":"candidate","pc":"subscriber","candidate":null}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Candidate {
                pc: PcKind::Subscriber,
                candidate: None
            }
        );
        let m = decode_client(
            r#"{"type":"candidate","pc":"publisher","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abc"}}"#,
        )
        .unwrap();
        let ClientMessage::Candidate {
            candidate: Some(c), ..
        } = m
        else {
            panic!("expected a candidate");
        };
        assert_eq!(c.sdp_mline_index, Some(0));
        assert_eq!(c.username_fragment.as_deref(), Some("abc"));
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(
            decode_client("{nope").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode_client("[1,2]").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode_client(r#"{"type":3}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let e = decode_client(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.request_type.as_deref(), Some("dance"));
        let e = decode_client(r#"{"type":"join","room":5}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.request_type.as_deref(), Some("join"));
        let e = decode_client(r#"{"type":"offer","pc":"sideways","sdp":""}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn encodes_server_messages_as_the_protocol_says() {
        let m = ServerMessage::TrackMuted {
            participant_id: "p1".into(),
            track_id: "t1".into(),
            muted: true,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"track_muted","participant_id":"p1","track_id":"t1","muted":true}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerMessage::Pong).unwrap(),
            r#"{"type":"pong"}"#
        );
        let e = ServerMessage::Error {
            code: ErrorCode::NotJoined,
            message: "join first".into(),
            request_type: Some("offer".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"error","code":"not_joined","message":"join first","request_type":"offer"}"#
        );
    }
}
