//! Where the engine's events find their session: participant id → the session's queue.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::engine::{EngineEvent, EventSink};

#[derive(Default)]
pub struct Sessions {
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<EngineEvent>>>,
}

impl Sessions {
    /// Events for `participant_id` go to the returned queue until [`Sessions::remove`].
    pub fn add(&self, participant_id: &str) -> mpsc::UnboundedReceiver<EngineEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(participant_id.to_string(), tx);
        rx
    }

    pub fn remove(&self, participant_id: &str) {
        self.lock().remove(participant_id);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<EngineEvent>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventSink for Sessions {
    /// Queues the event for its session; one that is gone (it left meanwhile) drops it.
    fn emit(&self, participant_id: &str, event: EngineEvent) {
        if let Some(tx) = self.lock().get(participant_id) {
            let _ = tx.send(event);
        }
    }
}
