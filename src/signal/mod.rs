//! Signaling: the one place that wires a client to its room and to the media engine. The
//! WebSocket session speaks the JSON protocol of `docs/protocol.md`; the room's events and the
//! engine's events come here and become its messages.

pub mod chat;
pub mod limits;
pub mod link;
pub mod outbox;
pub mod protocol;
pub mod sdp;
pub mod session;
pub mod sessions;
pub mod websocket;
