//! The data plane: RTP from publishers to subscribers.

pub mod downtrack;
pub mod extensions;
pub mod forwarder;
pub mod history;
pub mod keyframe;
pub mod kind;
pub mod receiver;
pub mod sequence;
