//! The signaling message parser and the checks the session makes on what it decodes:
//! `decode_client` on any text, room and name rules, chat parsing and relaying.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::room::ChatMessage;
use switchboard::signal::chat::{parse_chat, relay_json};
use switchboard::signal::protocol::{
    decode_client, ChatRelay, ClientMessage, ErrorCode, ParticipantInfo, ServerMessage,
    CLIENT_TYPES,
};
use switchboard::signal::session::{normalize_name, valid_room};

fn type_of(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::Subscription { .. } => "subscription",
        ClientMessage::Leave => "leave",
        ClientMessage::Ping => "ping",
    }
}

fn check_room_and_name(s: &str) {
    if valid_room(s) {
        assert!((1..=64).contains(&s.len()));
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    }
    if let Some(name) = normalize_name(s) {
        assert_eq!(name, s.trim());
        assert!((1..=64).contains(&name.chars().count()));
        assert!(!name.chars().any(char::is_control));
        assert_eq!(normalize_name(&name).as_deref(), Some(name.as_str()));
    }
}

fn round_trip(m: &ServerMessage) {
    let text = serde_json::to_string(m).expect("server messages serialize");
    let back: ServerMessage = serde_json::from_str(&text).expect("and parse back");
    assert_eq!(&back, m);
}

fuzz_target!(|data: &[u8]| {
    // Chat: any bytes, text or binary.
    match parse_chat(true, data, 4096) {
        Ok(text) => {
            assert!(text.len() <= 4096 && !text.trim().is_empty());
            let from = ParticipantInfo {
                id: "p1".into(),
                name: "n".into(),
            };
            let message = ChatMessage {
                from: from.clone(),
                text: text.clone(),
                ts: 1,
            };
            let relayed: ChatRelay =
                serde_json::from_str(&relay_json(&message)).expect("relay parses");
            assert_eq!(relayed.text, text);
            assert_eq!(relayed.from, from);
        }
        Err(message) => assert!(!message.is_empty()),
    }
    assert!(parse_chat(false, data, 4096).is_err());

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_room_and_name(text);
    match decode_client(text) {
        Ok(message) => {
            let value: serde_json::Value = serde_json::from_str(text).expect("it was JSON");
            assert_eq!(value["type"].as_str(), Some(type_of(&message)));
            match message {
                ClientMessage::Join { room, name, .. } => {
                    check_room_and_name(&room);
                    check_room_and_name(&name);
                }
                ClientMessage::Candidate { pc, candidate } => {
                    round_trip(&ServerMessage::Candidate { pc, candidate })
                }
                ClientMessage::Offer { pc, sdp } | ClientMessage::Answer { pc, sdp } => {
                    round_trip(&ServerMessage::Offer { pc, sdp })
                }
                ClientMessage::Mute { track_id, muted } => round_trip(&ServerMessage::TrackMuted {
                    participant_id: "p1".into(),
                    track_id,
                    muted,
                }),
                ClientMessage::Leave | ClientMessage::Ping => {}
            }
        }
        Err(e) => {
            match e.code {
                ErrorCode::UnknownType => {
                    let ty = e
                        .request_type
                        .as_deref()
                        .expect("unknown_type names the type");
                    assert!(!CLIENT_TYPES.contains(&ty));
                }
                ErrorCode::BadRequest => {
                    if let Some(ty) = e.request_type.as_deref() {
                        assert!(CLIENT_TYPES.contains(&ty));
                    }
                }
                other => panic!("decode_client answered {other:?}"),
            }
            // The error the session sends back is itself a valid message.
            round_trip(&ServerMessage::Error {
                code: e.code,
                message: e.message,
                request_type: e.request_type,
            });
        }
    }
});
