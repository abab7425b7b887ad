//! Signaling: the JSON protocol over `/ws`, wiring each client to its room and, through the
//! room, to the media engine.

pub mod limits;
pub mod outbox;
pub mod protocol;
pub mod sdp;
pub mod session;
