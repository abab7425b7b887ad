//! Participant: one signaling socket, its publisher PC and its subscriber PC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tracing::warn;
use webrtc::data_channel::DataChannel;

use crate::rtc::subscriber::SubscriberCommand;
use crate::signal::protocol::{ParticipantInfo, ServerMessage};

pub struct Participant {
    pub id: String,
    pub name: String,
    outbox: mpsc::Sender<ServerMessage>,
    subscriber: mpsc::UnboundedSender<SubscriberCommand>,
    chat: Mutex<Option<Arc<dyn DataChannel>>>,
    /// Set when the participant must go (its socket cannot keep up); the session watches it.
    kicked: AtomicBool,
    pub kick_notify: Notify,
}

impl Participant {
    pub fn new(
        id: String,
        name: String,
        outbox: mpsc::Sender<ServerMessage>,
        subscriber: mpsc::UnboundedSender<SubscriberCommand>,
    ) -> Self {
        Participant {
            id,
            name,
            outbox,
            subscriber,
            chat: Mutex::new(None),
            kicked: AtomicBool::new(false),
            kick_notify: Notify::new(),
        }
    }

    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }

    /// Queues a signaling message. Never waits: a client that does not read its socket is
    /// disconnected rather than allowed to hold up the room.
    pub fn send(&self, message: ServerMessage) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outbox.try_send(message) {
            warn!(participant = %self.id, "signaling queue full; disconnecting");
            self.kick();
        }
    }

    pub fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.kick_notify.notify_one();
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    pub fn subscriber(&self, command: SubscriberCommand) {
        // Fails only once the subscriber PC has shut down, when there is nothing to do.
        let _ = self.subscriber.send(command);
    }

    pub fn set_chat_channel(&self, channel: Option<Arc<dyn DataChannel>>) {
        if let Ok(mut chat) = self.chat.lock() {
            *chat = channel;
        }
    }

    pub fn chat_channel(&self) -> Option<Arc<dyn DataChannel>> {
        self.chat.lock().ok().and_then(|chat| chat.clone())
    }
}
