//! Participant: one member of a room, as the room sees it.

use std::sync::Arc;

use crate::room::events::{Listener, ParticipantInfo, RoomEvent};

pub struct Participant {
    pub id: String,
    pub name: String,
    listener: Arc<dyn Listener>,
}

impl Participant {
    pub fn new(id: String, name: String, listener: Arc<dyn Listener>) -> Self {
        Participant { id, name, listener }
    }

    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }

    /// Tells it something; never waits.
    pub fn tell(&self, event: RoomEvent) {
        self.listener.event(event);
    }
}
