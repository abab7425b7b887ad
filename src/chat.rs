//! The chat relay: the server-created `chat` data channel on each subscriber PC.
//!
//! A client sends `{"text": "..."}`; the server relays it to everyone else in the room with
//! `from` and `ts` set by the server. Anything else is answered on the same channel with an
//! error and relayed to nobody.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tracing::debug;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use crate::metrics::Metrics;
use crate::ratelimit::TokenBucket;
use crate::room::{Participant, Room};
use crate::signal::protocol::ChatRelay;

pub const LABEL: &str = "chat";

#[derive(Deserialize)]
struct ChatIn {
    text: String,
}

/// Checks one data-channel message; returns the text to relay or the reason to refuse it.
pub fn parse_chat(is_text: bool, data: &[u8], max_bytes: usize) -> Result<String, String> {
    if !is_text {
        return Err("chat messages must be text, not binary".into());
    }
    let raw = std::str::from_utf8(data).map_err(|_| "chat message is not UTF-8".to_string())?;
    let msg: ChatIn = serde_json::from_str(raw)
        .map_err(|e| format!("chat message must be {{\"text\": \"...\"}}: {e}"))?;
    if msg.text.len() > max_bytes {
        return Err(format!("chat text is over {max_bytes} bytes"));
    }
    if msg.text.trim().is_empty() {
        return Err("chat text is empty".into());
    }
    Ok(msg.text)
}

fn error_json(message: &str) -> String {
    serde_json::json!({"type": "error", "code": "bad_request", "message": message}).to_string()
}

/// Serves one participant's chat channel until it closes.
pub async fn serve(
    channel: Arc<dyn DataChannel>,
    from: Arc<Participant>,
    room: Arc<Room>,
    max_bytes: usize,
    rate_per_sec: u32,
    metrics: Arc<Metrics>,
) {
    let mut bucket = TokenBucket::new(rate_per_sec);
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnMessage(message) => {
                if !bucket.allow(Instant::now()) {
                    let _ = channel
                        .try_send_text(
                            &serde_json::json!({"type": "error", "code": "rate_limited", "message": "too many chat messages"}).to_string(),
                        )
                        .await;
                    continue;
                }
                match parse_chat(message.is_string, &message.data, max_bytes) {
                    Ok(text) => relay(&from, &room, text, &metrics).await,
                    Err(reason) => {
                        debug!(participant = %from.id, %reason, "chat message refused");
                        let _ = channel.try_send_text(&error_json(&reason)).await;
                    }
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
}

async fn relay(from: &Participant, room: &Room, text: String, metrics: &Metrics) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let relayed = ChatRelay {
        kind: "chat".into(),
        from: from.info(),
        text,
        ts,
    };
    let Ok(json) = serde_json::to_string(&relayed) else {
        return;
    };
    for other in room.others(&from.id) {
        if let Some(channel) = other.chat_channel() {
            // try_send: a participant whose channel is backed up misses the message rather
            // than delaying it for the others.
            if let Err(e) = channel.try_send_text(&json).await {
                debug!(to = %other.id, error = %e, "chat message not delivered");
            }
        }
    }
    Metrics::add(&metrics.chat_messages, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_text_and_refuses_the_rest() {
        assert_eq!(parse_chat(true, br#"{"text":"hi"}"#, 10).unwrap(), "hi");
        assert!(parse_chat(false, br#"{"text":"hi"}"#, 10).is_err());
        assert!(parse_chat(true, b"hi", 10).is_err());
        assert!(parse_chat(true, br#"{"txt":"hi"}"#, 10).is_err());
        assert!(parse_chat(true, br#"{"text":"   "}"#, 10).is_err());
        assert!(parse_chat(true, br#"{"text":"hello world"}"#, 10).is_err());
        assert!(parse_chat(true, &[0xff, 0xfe], 10).is_err());
    }
}
