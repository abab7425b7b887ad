//! What a room tells each of its participants, and the views of people and tracks it tells it
//! with. The session that serves a participant turns these into its client's messages.

use serde::{Deserialize, Serialize};

use crate::media::kind::TrackKind;

/// Who a participant is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
}

/// A published track as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: String,
    pub kind: TrackKind,
    pub muted: bool,
}

/// A participant and what it publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantState {
    pub id: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

/// A chat message as the room relays it: the sender is the room's, never the client's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub from: ParticipantInfo,
    pub text: String,
    /// When the room relayed it, Unix milliseconds.
    pub ts: u64,
}

/// One thing a participant is told, in the room's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// It is in: the others as they are now. Always its first event.
    Joined {
        others: Vec<ParticipantState>,
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
}

/// Where a participant hears its room. Called under the room's lock, so it must not block or
/// call back into the room: queue and return.
pub trait Listener: Send + Sync {
    fn event(&self, event: RoomEvent);
}
