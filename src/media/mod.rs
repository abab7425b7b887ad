//! The data plane: RTP from publishers to subscribers.

pub mod allocator;
pub mod bwe;
pub mod downtrack;
pub mod extensions;
pub mod forwarder;
pub mod history;
pub mod keyframe;
pub mod kind;
pub mod layers;
pub mod quality;
pub mod receiver;
pub mod sequence;
pub mod speech;
pub mod vp8;
