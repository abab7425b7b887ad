//! Chat on the `chat` data channel, as the wire protocol has it.
//!
//! A client sends `{"text": "..."}`; the room relays it to everyone else with `from` and `ts`
//! set by the server. Anything else is answered on the same channel with an error and relayed
//! to nobody.

use serde::Deserialize;

use crate::room::ChatMessage;
use crate::signal::protocol::ChatRelay;

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

/// An error on the chat channel, as the protocol words it.
pub fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"type": "error", "code": code, "message": message}).to_string()
}

/// A chat message as relayed to the others: `from` and `ts` are the server's.
pub fn relay_json(message: &ChatMessage) -> String {
    let relayed = ChatRelay {
        kind: "chat".into(),
        from: message.from.clone(),
        text: message.text.clone(),
        ts: message.ts,
    };
    serde_json::to_string(&relayed).unwrap_or_default()
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
