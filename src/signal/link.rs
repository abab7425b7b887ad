//! The room's link to the media engine: what a room asks (a participant in or out, a track
//! forwarded or gone, a mute, a chat message) becomes a command for the worker that hosts it.

use std::sync::Arc;

use crate::engine::{Engine, WorkerHandle};
use crate::room::{ChatMessage, MediaLink, MediaPlacer, Placement, PublishedTrack};
use crate::signal::chat;

/// One room's worker.
pub struct EngineLink {
    worker: WorkerHandle,
    room: Arc<str>,
}

impl MediaLink for EngineLink {
    fn add_participant(&self, participant_id: &str) {
        self.worker.add_participant(participant_id, &self.room);
    }

    fn remove_participant(&self, participant_id: &str) {
        self.worker.remove_participant(participant_id);
    }

    fn subscribe(&self, subscriber_id: &str, track: &PublishedTrack) {
        self.worker
            .subscribe(subscriber_id, &track.publisher_id, &track.track_id);
    }

    fn remove_track(&self, publisher_id: &str, track_id: &str) {
        self.worker.remove_track(publisher_id, track_id);
    }

    fn set_muted(&self, publisher_id: &str, track_id: &str, muted: bool) {
        self.worker.set_muted(publisher_id, track_id, muted);
    }

    fn deliver_chat(&self, to: &str, message: &ChatMessage) {
        self.worker
            .send_channel_message(to, Arc::from(chat::relay_json(message)));
    }
}

/// Puts each new room on a worker of the engine.
pub struct EnginePlacer {
    pub engine: Arc<Engine>,
}

impl MediaPlacer for EnginePlacer {
    fn place(&self, room_name: &str) -> Placement {
        let host = self.engine.place();
        Placement {
            link: Arc::new(EngineLink {
                worker: self.engine.worker(host),
                room: Arc::from(room_name),
            }),
            host,
        }
    }
}
