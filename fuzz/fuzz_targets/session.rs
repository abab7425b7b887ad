//! The session state machine, without a socket: random signaling frames from several
//! participants go through what a session does with them (`decode_client`, `valid_room`,
//! `normalize_name`, `media_sections` for publisher offers, `parse_chat` for the chat
//! channel) into the control plane (`room::Registry` with a recording fake media plane),
//! checked after every frame against the property test's model.
//!
//! Input: lines; the first byte of a line picks the participant, the rest is a frame. A line
//! whose first byte is `c`..`h` is a chat message from participant 0..5.
#![no_main]

#[path = "../../tests/control_plane/model.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::{Harness, Op};
use switchboard::signal::chat::parse_chat;
use switchboard::signal::protocol::{decode_client, ClientMessage, PcKind};
use switchboard::signal::session::{normalize_name, valid_room};

const PEOPLE: usize = 6;

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new(PEOPLE);
    // Who has joined, as each session sees it (a second join is refused by the session).
    for line in data.split(|&b| b == b'\n').take(300) {
        let Some((&first, frame)) = line.split_first() else {
            continue;
        };
        if (b'c'..=b'h').contains(&first) {
            if let Ok(text) = parse_chat(true, frame, 4096) {
                assert!(!text.trim().is_empty() && text.len() <= 4096);
            }
            continue;
        }
        let who = usize::from(first) % PEOPLE;
        let Ok(text) = std::str::from_utf8(frame) else {
            continue;
        };
        let Ok(message) = decode_client(text) else {
            continue;
        };
        let op = match message {
            ClientMessage::Join { room, name, .. } => {
                if !valid_room(&room) || normalize_name(&name).is_none() {
                    continue;
                }
                Op::Join { who, room }
            }
            ClientMessage::Offer {
                pc: PcKind::Publisher,
                sdp,
            } => Op::Offer { who, sdp },
            ClientMessage::Mute { track_id, muted } => Op::Mute {
                who,
                track: track_id,
                muted,
            },
            ClientMessage::Leave => Op::Leave { who },
            // Answers and candidates go to the media engine; pings change nothing.
            _ => continue,
        };
        h.apply(&op);
    }
    h.finish();
});
