//! Signaling: the JSON protocol over `/ws`.

pub mod protocol;
pub mod session;
