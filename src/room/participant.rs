//! Participant: one signaling session as the room sees it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tracing::warn;

use crate::signal::outbox::{Outbox, Overflow};
use crate::signal::protocol::{ParticipantInfo, ServerMessage};

pub struct Participant {
    pub id: String,
    pub name: String,
    outbox: Outbox,
    /// Set when the participant must go (its socket cannot keep up, its media path died);
    /// the session watches it.
    kicked: AtomicBool,
    kick_reason: std::sync::Mutex<&'static str>,
    pub kick_notify: Notify,
}

impl Participant {
    pub fn new(id: String, name: String, outbox: Outbox) -> Self {
        Participant {
            id,
            name,
            outbox,
            kicked: AtomicBool::new(false),
            kick_reason: std::sync::Mutex::new(""),
            kick_notify: Notify::new(),
        }
    }

    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }

    /// Queues a signaling message. Never waits: a client that leaves too much unread (bytes or
    /// messages) is disconnected rather than allowed to hold up the room or its memory.
    pub fn send(&self, message: ServerMessage) {
        if let Err(Overflow::NotReading) = self.outbox.push(&message) {
            if !self.is_kicked() {
                warn!(participant = %self.id, "client not reading its signaling socket; disconnecting");
            }
            self.kick("not reading");
        }
    }

    /// Asks the session to end this participant, saying why in the close frame.
    pub fn kick(&self, reason: &'static str) {
        if let Ok(mut r) = self.kick_reason.lock() {
            if r.is_empty() {
                *r = reason;
            }
        }
        self.kicked.store(true, Ordering::Release);
        self.kick_notify.notify_one();
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    pub fn kick_reason(&self) -> &'static str {
        self.kick_reason.lock().map(|r| *r).unwrap_or("kicked")
    }
}
