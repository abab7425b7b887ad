//! What waits for one client's socket: server messages already serialized, bounded in count
//! and in bytes, so a client that stops reading is found out by what it leaves unread rather
//! than by how many messages that is (one subscriber offer can be hundreds of kilobytes).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::signal::protocol::ServerMessage;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The client left too much unread: it must be disconnected.
    NotReading,
    /// The socket's writer is gone (the session is ending).
    Closed,
}

struct Shared {
    /// Bytes queued or being written, not yet taken by the kernel.
    unsent: AtomicUsize,
    overflowed: AtomicBool,
}

/// The sending side, shared by the session and its participant.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<String>,
    shared: Arc<Shared>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

/// The writer's side.
pub struct OutboxReader {
    rx: mpsc::Receiver<String>,
    shared: Arc<Shared>,
}

impl Outbox {
    pub fn channel(
        max_messages: usize,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> (Outbox, OutboxReader) {
        let (tx, rx) = mpsc::channel(max_messages.max(1));
        let shared = Arc::new(Shared {
            unsent: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
        });
        (
            Outbox {
                tx,
                shared: shared.clone(),
                max_bytes,
                metrics,
            },
            OutboxReader { rx, shared },
        )
    }

    /// Queues a message without waiting. One message larger than the byte bound still goes
    /// when nothing else waits, so a large but legitimate offer is never refused outright.
    pub fn push(&self, message: &ServerMessage) -> Result<(), Overflow> {
        let Ok(text) = serde_json::to_string(message) else {
            return Ok(());
        };
        let len = text.len();
        let before = self.shared.unsent.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.max_bytes {
            self.shared.unsent.fetch_sub(len, Ordering::AcqRel);
            return Err(self.overflow());
        }
        match self.tx.try_send(text) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.unsent.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => Err(self.overflow()),
                    mpsc::error::TrySendError::Closed(_) => Err(Overflow::Closed),
                }
            }
        }
    }

    fn overflow(&self) -> Overflow {
        // Counted once per socket, however many messages the room still tries to send it.
        if !self.shared.overflowed.swap(true, Ordering::AcqRel) {
            Metrics::add(&self.metrics.slow_readers_dropped, 1);
        }
        Overflow::NotReading
    }

    /// True once a message could not be queued because the client is not reading.
    pub fn overflowed(&self) -> bool {
        self.shared.overflowed.load(Ordering::Acquire)
    }

    pub fn unsent_bytes(&self) -> usize {
        self.shared.unsent.load(Ordering::Acquire)
    }
}

impl OutboxReader {
    pub async fn recv(&mut self) -> Option<String> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<String> {
        self.rx.try_recv().ok()
    }

    /// A message of `len` bytes was taken by the kernel.
    pub fn sent(&self, len: usize) {
        self.shared.unsent.fetch_sub(len, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_bytes_and_messages_and_counts_once() {
        let metrics = Arc::new(Metrics::default());
        let (outbox, mut reader) = Outbox::channel(100, 40, metrics.clone());
        // One message over the bound goes when nothing waits.
        let big = ServerMessage::Error {
            code: crate::signal::protocol::ErrorCode::BadRequest,
            message: "x".repeat(100),
            request_type: None,
        };
        assert_eq!(outbox.push(&big), Ok(()));
        assert_eq!(outbox.push(&ServerMessage::Pong), Err(Overflow::NotReading));
        assert_eq!(outbox.push(&ServerMessage::Pong), Err(Overflow::NotReading));
        assert_eq!(metrics.snapshot().slow_readers_dropped, 1);
        let text = reader.try_recv().unwrap();
        reader.sent(text.len());
        assert_eq!(outbox.unsent_bytes(), 0);
        assert_eq!(outbox.push(&ServerMessage::Pong), Ok(()));

        let (outbox, _reader) = Outbox::channel(2, 1 << 20, metrics.clone());
        assert_eq!(outbox.push(&ServerMessage::Pong), Ok(()));
        assert_eq!(outbox.push(&ServerMessage::Pong), Ok(()));
        assert_eq!(outbox.push(&ServerMessage::Pong), Err(Overflow::NotReading));
        assert!(outbox.overflowed());
        assert_eq!(metrics.snapshot().slow_readers_dropped, 2);
        drop(_reader);
        let (outbox, reader) = Outbox::channel(2, 1 << 20, metrics);
        drop(reader);
        assert_eq!(outbox.push(&ServerMessage::Pong), Err(Overflow::Closed));
    }
}
