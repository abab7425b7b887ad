//! A protocol client: a real WebRTC participant speaking the signaling protocol.
//!
//! The integration tests and the load tester both use it. It joins a room, answers the
//! server's subscriber offers, publishes synthetic VP8 and Opus over its own publisher PC,
//! records every packet it receives per remote track, and chats over the `chat` channel.
//!
//! It shares no code with the server: it speaks the protocol as `docs/protocol.md` tells it
//! (`wire.rs`). This file holds the signaling side (joining, waiting for messages, chat,
//! leaving); `negotiate.rs` answers offers, `publish.rs` and `senders.rs` publish, and
//! `received.rs` counts what arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;

use crate::load::bottleneck::{Link, LinkConfig, LinkStats};
use crate::load::error::ClientError;
use crate::load::negotiate::read_loop;
use crate::load::peer::{Pc, PcFactory};
use crate::load::publish::PublishStats;
use crate::load::received::{RemoteTrackStats, DEFAULT_FREEZE_THRESHOLD};
use crate::load::wire::{ChatRelay, ChatSend, ClientMessage, ParticipantState, ServerMessage};
use crate::metrics::Metrics;

/// What the client's tasks (the socket reader, the peer connections' events) share with it.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) tracks: Mutex<HashMap<(String, String), RemoteTrackStats>>,
    pub(crate) remotes: Mutex<HashMap<(String, String), Arc<dyn TrackRemote>>>,
    pub(crate) chat: Mutex<Vec<ChatRelay>>,
    pub(crate) chat_errors: Mutex<Vec<String>>,
    pub(crate) chat_channel: Mutex<Option<Arc<dyn DataChannel>>>,
    pub(crate) publisher_connected: AtomicBool,
    /// Set when the signaling socket closed under us (the server went away, say).
    pub(crate) signaling_closed: AtomicBool,
    pub(crate) freeze_threshold_us: AtomicU64,
    pub(crate) record_arrivals: AtomicBool,
    pub(crate) last_subscriber_offer: Mutex<Option<String>>,
    pub(crate) last_publisher_answer: Mutex<Option<String>>,
    /// See [`JoinOptions::answer_delay`].
    pub(crate) answer_delay: Duration,
}

/// How a client joins.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub token: Option<String>,
    /// Holds each subscriber answer this long after the local description is set (its
    /// connectivity checks start at once): a client on a slow signaling path, as tests need.
    pub answer_delay: Duration,
    /// The emulated downlink in front of what the subscriber PC receives (rate, delay, loss);
    /// the default changes nothing. [`Client::set_downlink`] changes it while it runs.
    pub downlink: LinkConfig,
    /// Seeds the downlink's random loss.
    pub seed: u64,
}

/// One participant: its signaling socket, its two peer connections, what it publishes and
/// what it receives.
pub struct Client {
    pub id: String,
    pub name: String,
    pub room: String,
    pub participants_at_join: Vec<ParticipantState>,
    pub join_time: Duration,
    /// When the socket was opened: join time to first media is measured from here.
    pub started_at: Instant,
    pub(crate) outgoing: mpsc::UnboundedSender<String>,
    events: AsyncMutex<mpsc::UnboundedReceiver<ServerMessage>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) factory: Arc<PcFactory>,
    subscriber: Arc<AsyncMutex<Option<Pc>>>,
    pub(crate) publisher: Arc<AsyncMutex<Option<Pc>>>,
    pub publish_stats: Arc<PublishStats>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) media_tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Client {
    /// Connects, joins and returns once `joined` arrived.
    pub async fn join(url: &str, room: &str, name: &str) -> Result<Client, ClientError> {
        Self::join_with_token(url, room, name, None).await
    }

    pub async fn join_with_token(
        url: &str,
        room: &str,
        name: &str,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        let options = JoinOptions {
            token: token.map(str::to_string),
            ..JoinOptions::default()
        };
        Self::join_with(url, room, name, &options).await
    }

    pub async fn join_with(
        url: &str,
        room: &str,
        name: &str,
        options: &JoinOptions,
    ) -> Result<Client, ClientError> {
        let token = options.token.as_deref();
        let started = Instant::now();
        // Nagle off, as browsers have it: otherwise a small message written while the last
        // one is unacknowledged (an answer right after an answer) waits for the server's
        // delayed ACK, 40 ms, and every renegotiation looks that much slower than it is.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_string(),
                source,
            })?;
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(text) = outgoing_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let _ = outgoing.send(ClientMessage::Join { room, name, token }.encode());
        // Read until joined (or an error) before handing the socket to the reader task.
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(frame) = stream.next().await {
                let Ok(Message::Text(text)) = frame else {
                    if matches!(frame, Ok(Message::Close(_)) | Err(_)) {
                        return Err(ClientError::Closed);
                    }
                    continue;
                };
                match ServerMessage::decode(&text) {
                    Some(m @ ServerMessage::Joined { .. }) => return Ok(m),
                    Some(ServerMessage::Error { code, message, .. }) => {
                        return Err(ClientError::Refused { code, message })
                    }
                    _ => {}
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("joined"))??;
        let ServerMessage::Joined {
            participant,
            participants,
            room,
            ..
        } = joined
        else {
            return Err(ClientError::Closed);
        };

        let metrics = Arc::new(Metrics::default());
        let factory = Arc::new(
            PcFactory::loopback(metrics).with_downlink(Link::new(options.downlink, options.seed)),
        );
        let shared = Arc::new(Shared {
            freeze_threshold_us: AtomicU64::new(DEFAULT_FREEZE_THRESHOLD.as_micros() as u64),
            answer_delay: options.answer_delay,
            ..Shared::default()
        });
        let subscriber: Arc<AsyncMutex<Option<Pc>>> = Arc::new(AsyncMutex::new(None));
        let publisher: Arc<AsyncMutex<Option<Pc>>> = Arc::new(AsyncMutex::new(None));
        let (events_tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            stream,
            outgoing.clone(),
            events_tx,
            factory.clone(),
            shared.clone(),
            subscriber.clone(),
            publisher.clone(),
        ));
        Ok(Client {
            id: participant.id,
            name: participant.name,
            room,
            participants_at_join: participants,
            join_time: started.elapsed(),
            started_at: started,
            outgoing,
            events: AsyncMutex::new(events),
            shared,
            factory,
            subscriber,
            publisher,
            publish_stats: Arc::new(PublishStats::default()),
            tasks: Mutex::new(vec![writer, reader]),
            media_tasks: Mutex::new(Vec::new()),
        })
    }

    /// Serves the subscriber's emulated downlink at `rate_bps` from now on (`None`: no limit),
    /// as a network whose capacity changes.
    pub fn set_downlink(&self, rate_bps: Option<u64>) {
        if let Ok(mut link) = self.factory.downlink().lock() {
            link.set_rate(rate_bps, Instant::now());
        }
    }

    /// Replaces the whole downlink emulation (rate, delay, loss) from now on.
    pub fn set_link(&self, config: LinkConfig) {
        if let Ok(mut link) = self.factory.downlink().lock() {
            link.set_rate(config.rate_bps, Instant::now());
            link.set_config(config);
        }
    }

    /// The downlink emulation as it is now.
    pub fn link(&self) -> LinkConfig {
        self.factory
            .downlink()
            .lock()
            .map(|l| l.config())
            .unwrap_or_default()
    }

    /// What the downlink emulation did so far: datagrams delivered, lost, dropped at the queue.
    pub fn downlink_stats(&self) -> LinkStats {
        self.factory
            .downlink()
            .lock()
            .map(|l| l.stats())
            .unwrap_or_default()
    }

    /// Tells the server how large this client shows a track it receives (`subscription`), in
    /// device pixels: the server picks the simulcast layer that covers it.
    pub fn set_view_size(&self, track_id: &str, width: u32, height: u32) {
        let message = ClientMessage::Subscription {
            track_id,
            enabled: true,
            width,
            height,
        };
        self.send_raw(message.encode());
    }

    /// Pauses (`false`) or resumes a track this client receives (`subscription`).
    pub fn set_track_enabled(&self, track_id: &str, enabled: bool) {
        let message = ClientMessage::Subscription {
            track_id,
            enabled,
            width: 0,
            height: 0,
        };
        self.send_raw(message.encode());
    }

    /// Sends a raw text frame (tests use it to send malformed input).
    pub fn send_raw(&self, text: impl Into<String>) {
        let _ = self.outgoing.send(text.into());
    }

    /// Sends a JSON value as a text frame (tests use it to send what the client would not).
    pub fn send_json(&self, value: serde_json::Value) {
        self.send_raw(value.to_string());
    }

    /// Waits for the next server message matching `pred`, skipping others.
    pub async fn wait_for(
        &self,
        what: &'static str,
        timeout: Duration,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage, ClientError> {
        let mut events = self.events.lock().await;
        tokio::time::timeout(timeout, async {
            while let Some(event) = events.recv().await {
                if pred(&event) {
                    return Ok(event);
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout(what))?
    }

    /// Every server message received and not yet consumed.
    pub async fn drain_events(&self) -> Vec<ServerMessage> {
        let mut events = self.events.lock().await;
        let mut out = Vec::new();
        while let Ok(e) = events.try_recv() {
            out.push(e);
        }
        out
    }

    /// The SDP of the last subscriber offer the server sent.
    pub fn last_subscriber_offer(&self) -> Option<String> {
        self.shared
            .last_subscriber_offer
            .lock()
            .ok()
            .and_then(|o| o.clone())
    }

    /// The SDP of the last answer the server gave to this client's publisher offers.
    pub fn last_publisher_answer(&self) -> Option<String> {
        self.shared
            .last_publisher_answer
            .lock()
            .ok()
            .and_then(|o| o.clone())
    }

    /// True once the server closed the signaling socket.
    pub fn signaling_closed(&self) -> bool {
        self.shared.signaling_closed.load(Ordering::Acquire)
    }

    /// Sends a chat message once the chat channel is open.
    pub async fn chat(&self, text: &str) -> Result<(), ClientError> {
        self.chat_raw(&ChatSend { text }.encode()).await
    }

    pub async fn chat_raw(&self, raw: &str) -> Result<(), ClientError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let channel = self.shared.chat_channel.lock().ok().and_then(|c| c.clone());
            if let Some(channel) = channel {
                if channel.send_text(raw).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(ClientError::Timeout("chat channel"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn chat_received(&self) -> Vec<ChatRelay> {
        self.shared
            .chat
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn chat_errors(&self) -> Vec<String> {
        self.shared
            .chat_errors
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Sends `leave` and closes everything.
    pub async fn leave(self) {
        self.send_raw(ClientMessage::Leave.encode());
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.close().await;
    }

    /// Closes both peer connections but keeps the signaling socket, as a client whose media
    /// died (a crashed media process, say) would.
    pub async fn close_peer_connections(&self) {
        self.stop_publishing();
        for pc in [
            self.subscriber.lock().await.take(),
            self.publisher.lock().await.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = pc.close().await;
        }
    }

    /// Drops the socket and the PCs without a word, like a closed browser tab.
    pub async fn close(self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        self.close_peer_connections().await;
    }
}
