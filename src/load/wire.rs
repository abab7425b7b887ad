//! The signaling protocol as this client reads and writes it, from `docs/protocol.md`.
//!
//! Written from the document, not from the server's types: the client and the server are two
//! implementations of one contract, so a mistake in either shows up as a failing test instead
//! of hiding in code they share. Like any third-party client, it ignores fields it does not
//! know, reads error codes as plain strings, and skips message types it does not know.

use serde::{Deserialize, Deserializer, Serialize};

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcKind {
    /// The one the client offers and sends its media on.
    Publisher,
    /// The one the server offers and forwards everyone else's media on.
    Subscriber,
}

/// The kind of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Audio,
    Video,
}

impl TrackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

/// An ICE candidate, shaped as the browser's `RTCIceCandidateInit`.
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

/// `{id, name}`: who a participant is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
}

/// `{id, kind, muted}`: a track someone publishes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrackInfo {
    pub id: String,
    pub kind: TrackKind,
    pub muted: bool,
}

/// `{id, name, tracks}`: someone already in the room, in `joined`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParticipantState {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tracks: Vec<TrackInfo>,
}

/// `{urls, username?, credential?}`, shaped for `RTCPeerConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IceServer {
    /// One URL or a list, as `RTCIceServer.urls` allows.
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Urls::deserialize(d)? {
        Urls::One(url) => vec![url],
        Urls::Many(urls) => urls,
    })
}

/// A message from the server (the "Server → client" table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        room: String,
        participant: ParticipantInfo,
        /// The others already in the room.
        #[serde(default)]
        participants: Vec<ParticipantState>,
        #[serde(default)]
        ice_servers: Vec<IceServer>,
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
        /// `null`: end of candidates.
        #[serde(default)]
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
    Error {
        /// One of the document's error codes (`bad_request`, `invalid_sdp`, ...).
        code: String,
        #[serde(default)]
        message: String,
        /// The `type` of the message this answers, when the server knows it.
        #[serde(default)]
        request_type: Option<String>,
    },
    Pong,
    /// The server's view of a participant's connection: `excellent`, `good`, `poor`, `lost`.
    Quality {
        participant_id: String,
        quality: String,
    },
    /// A `type` this client does not know (a newer server's): kept, not acted on.
    #[serde(other)]
    Unknown,
}

impl ServerMessage {
    /// Reads one text frame: `None` when it is not a message this client can read (not JSON,
    /// no `type`, or a known type with fields it cannot make sense of).
    pub fn decode(text: &str) -> Option<ServerMessage> {
        serde_json::from_str(text).ok()
    }
}

/// A message to the server (the "Client → server" table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage<'a> {
    Join {
        room: &'a str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    },
    Offer {
        pc: PcKind,
        sdp: &'a str,
    },
    Answer {
        pc: PcKind,
        sdp: &'a str,
    },
    Candidate {
        pc: PcKind,
        candidate: Option<Candidate>,
    },
    Mute {
        track_id: &'a str,
        muted: bool,
    },
    /// How large this client shows a track it receives, in device pixels (0 × 0: unknown);
    /// `enabled: false` pauses it.
    Subscription {
        track_id: &'a str,
        enabled: bool,
        width: u32,
        height: u32,
    },
    Leave,
    Ping,
}

impl ClientMessage<'_> {
    /// The text frame that carries it.
    pub fn encode(&self) -> String {
        // Plain strings, bools and options: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The label of the server's chat data channel.
pub const CHAT_LABEL: &str = "chat";

/// What a client sends on the chat channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatSend<'a> {
    pub text: &'a str,
}

impl ChatSend<'_> {
    /// The data channel message that carries it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A chat message relayed by the server: `{"type":"chat","from":{id,name},"text","ts"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatRelay {
    /// Always `"chat"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub from: ParticipantInfo,
    pub text: String,
    /// When the server relayed it, Unix milliseconds.
    pub ts: u64,
}

impl ChatRelay {
    /// Reads one chat channel message as a relay; `None` for anything else (an error, say).
    pub fn decode(text: &str) -> Option<ChatRelay> {
        serde_json::from_str::<ChatRelay>(text)
            .ok()
            .filter(|relay| relay.kind == "chat")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_server_message_of_the_document() {
        let joined = ServerMessage::decode(
            r#"{"type":"joined","room":"r1","participant":{"id":"p2","name":"Bo"},
                "participants":[{"id":"p1","name":"Al","tracks":[{"id":"t1","kind":"video","muted":false}]}],
                "ice_servers":[{"urls":["stun:a"]},{"urls":"turn:b","username":"u","credential":"c"}]}"#,
        )
        .unwrap();
        let ServerMessage::Joined {
            room,
            participant,
            participants,
            ice_servers,
        } = joined
        else {
            panic!("not joined: {joined:?}");
        };
        assert_eq!((room.as_str(), participant.id.as_str()), ("r1", "p2"));
        assert_eq!(participants[0].tracks[0].kind, TrackKind::Video);
        assert_eq!(ice_servers[1].urls, vec!["turn:b".to_string()]);
        assert_eq!(ice_servers[1].username.as_deref(), Some("u"));

        let cases = [
            (
                r#"{"type":"offer","pc":"subscriber","sdp":"v=0"}"#,
                ServerMessage::Offer {
                    pc: PcKind::Subscriber,
                    sdp: "v=0".into(),
                },
            ),
            (
                r#"{"type":"answer","pc":"publisher","sdp":"v=0"}"#,
                ServerMessage::Answer {
                    pc: PcKind::Publisher,
                    sdp: "v=0".into(),
                },
            ),
            (
                r#"{"type":"candidate","pc":"publisher","candidate":null}"#,
                ServerMessage::Candidate {
                    pc: PcKind::Publisher,
                    candidate: None,
                },
            ),
            (
                r#"{"type":"participant_joined","participant":{"id":"p3","name":"Cy"}}"#,
                ServerMessage::ParticipantJoined {
                    participant: ParticipantInfo {
                        id: "p3".into(),
                        name: "Cy".into(),
                    },
                },
            ),
            (
                r#"{"type":"participant_left","participant_id":"p3"}"#,
                ServerMessage::ParticipantLeft {
                    participant_id: "p3".into(),
                },
            ),
            (
                r#"{"type":"track_published","participant_id":"p1","track":{"id":"t2","kind":"audio","muted":true}}"#,
                ServerMessage::TrackPublished {
                    participant_id: "p1".into(),
                    track: TrackInfo {
                        id: "t2".into(),
                        kind: TrackKind::Audio,
                        muted: true,
                    },
                },
            ),
            (
                r#"{"type":"track_unpublished","participant_id":"p1","track_id":"t2"}"#,
                ServerMessage::TrackUnpublished {
                    participant_id: "p1".into(),
                    track_id: "t2".into(),
                },
            ),
            (
                r#"{"type":"track_muted","participant_id":"p1","track_id":"t2","muted":false}"#,
                ServerMessage::TrackMuted {
                    participant_id: "p1".into(),
                    track_id: "t2".into(),
                    muted: false,
                },
            ),
            (
                r#"{"type":"error","code":"invalid_sdp","message":"no","request_type":"offer"}"#,
                ServerMessage::Error {
                    code: "invalid_sdp".into(),
                    message: "no".into(),
                    request_type: Some("offer".into()),
                },
            ),
            (r#"{"type":"pong"}"#, ServerMessage::Pong),
        ];
        for (text, want) in cases {
            assert_eq!(ServerMessage::decode(text), Some(want), "{text}");
        }
    }

    #[test]
    fn unknown_fields_and_types_do_not_break_the_client() {
        assert_eq!(
            ServerMessage::decode(r#"{"type":"pong","extra":{"a":[1]}}"#),
            Some(ServerMessage::Pong)
        );
        // An error code this client has never heard of is still an error.
        assert_eq!(
            ServerMessage::decode(r#"{"type":"error","code":"brand_new","message":"m"}"#),
            Some(ServerMessage::Error {
                code: "brand_new".into(),
                message: "m".into(),
                request_type: None,
            })
        );
        assert_eq!(
            ServerMessage::decode(r#"{"type":"speaker_changed","participant_id":"p1"}"#),
            Some(ServerMessage::Unknown)
        );
        assert_eq!(ServerMessage::decode("not json"), None);
        assert_eq!(ServerMessage::decode(r#"{"no_type":1}"#), None);
        assert_eq!(ServerMessage::decode(r#"{"type":"offer","pc":"x"}"#), None);
    }

    #[test]
    fn writes_client_messages_as_the_document_says() {
        let join = ClientMessage::Join {
            room: "r1",
            name: "Al",
            token: None,
        };
        assert_eq!(join.encode(), r#"{"type":"join","room":"r1","name":"Al"}"#);
        let join = ClientMessage::Join {
            room: "r1",
            name: "Al",
            token: Some("s3"),
        };
        assert_eq!(
            join.encode(),
            r#"{"type":"join","room":"r1","name":"Al","token":"s3"}"#
        );
        let answer = ClientMessage::Answer {
            pc: PcKind::Subscriber,
            sdp: "v=0",
        };
        assert_eq!(
            answer.encode(),
            r#"{"type":"answer","pc":"subscriber","sdp":"v=0"}"#
        );
        let candidate = ClientMessage::Candidate {
            pc: PcKind::Publisher,
            candidate: Some(Candidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: None,
            }),
        };
        assert_eq!(
            candidate.encode(),
            r#"{"type":"candidate","pc":"publisher","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#
        );
        let end = ClientMessage::Candidate {
            pc: PcKind::Subscriber,
            candidate: None,
        };
        assert_eq!(
            end.encode(),
            r#"{"type":"candidate","pc":"subscriber","candidate":null}"#
        );
        let mute = ClientMessage::Mute {
            track_id: "t1",
            muted: true,
        };
        assert_eq!(
            mute.encode(),
            r#"{"type":"mute","track_id":"t1","muted":true}"#
        );
        let subscription = ClientMessage::Subscription {
            track_id: "t1",
            enabled: true,
            width: 300,
            height: 170,
        };
        assert_eq!(
            subscription.encode(),
            r#"{"type":"subscription","track_id":"t1","enabled":true,"width":300,"height":170}"#
        );
        assert_eq!(ClientMessage::Leave.encode(), r#"{"type":"leave"}"#);
        assert_eq!(ClientMessage::Ping.encode(), r#"{"type":"ping"}"#);
    }

    #[test]
    fn reads_chat_relays_and_nothing_else() {
        let relay = ChatRelay::decode(
            r#"{"type":"chat","from":{"id":"p1","name":"Al"},"text":"hi","ts":5}"#,
        )
        .unwrap();
        assert_eq!(relay.from.name, "Al");
        assert_eq!((relay.text.as_str(), relay.ts), ("hi", 5));
        assert_eq!(
            ChatRelay::decode(r#"{"type":"error","code":"bad_request","message":"blank"}"#),
            None
        );
        assert_eq!(ChatSend { text: "a\"b" }.encode(), r#"{"text":"a\"b"}"#);
    }
}
