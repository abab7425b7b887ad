//! The media engine: a few worker threads, each driving the sans-IO peer connections (the
//! `rtc` crate) of the rooms placed on it, over one shared UDP port.
//!
//! Every worker binds the same address with `SO_REUSEPORT`; the kernel spreads clients across
//! the workers' sockets by a hash of their address. A room lives on one worker, so a packet
//! goes socket → publisher PC → Receiver → every DownTrack → subscriber PC → batched send in
//! one thread, as a plain loop: no lock, channel hop or task wake-up per subscriber. When the
//! kernel hands a client's datagram to another worker than the one that owns its peer
//! connection, that worker passes it on once through the owner's inbox (the owner is written
//! in the ufrag the client quotes in every STUN Binding request); only inbound datagrams take
//! that hop, and only for the clients the hash put elsewhere.
//!
//! The engine calls nobody: commands come in through a worker's inbox ([`WorkerHandle`]), in
//! the order the control plane decided them, and what the rest of the server must hear about a
//! participant goes out as an [`EngineEvent`] through the [`EventSink`] the engine was started
//! with. It knows rooms only as the participants a command names.

mod bandwidth;
mod chat;
mod congestion;
mod control;
pub mod demux;
pub mod feedback;
pub mod negotiation;
mod participant;
pub mod peer;
mod peers;
mod publisher;
mod quality;
pub mod router;
mod speakers;
pub mod srtp;
mod subscriber;
pub mod timers;
mod transmit;
pub mod udp;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::media::downtrack::QueueLimits;
use crate::media::kind::TrackKind;
pub use crate::media::quality::Quality;
use crate::metrics::Metrics;

pub use peer::{parse_srtp_profiles, sctp_max_message_for_chat, PeerSettings};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("WebRTC: {0}")]
    Rtc(String),
    #[error("UDP port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting a worker: {0}")]
    Worker(std::io::Error),
}

/// Which of a participant's two peer connections: the one it publishes on (the client
/// offers) or the one it receives on (the server offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcKind {
    Publisher,
    Subscriber,
}

/// Who protects forwarded media (see `--srtp-writer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpWriter {
    /// The worker, in place, beside the stack.
    Worker,
    /// The stack's own pipeline.
    Stack,
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub workers: usize,
    /// Where the shared UDP port is bound (port 0: any free port).
    pub bind: SocketAddr,
    /// The IPs announced in ICE candidates, on the bound port.
    pub announce: Vec<IpAddr>,
    pub srtp: String,
    pub srtp_writer: SrtpWriter,
    pub pli_interval: Duration,
    /// Video packets kept per published track, and noted per DownTrack, to answer NACKs.
    pub nack_window: u16,
    pub nack_max_age: Duration,
    pub max_retransmits_per_sec: u32,
    pub queue: QueueLimits,
    pub max_chat_bytes: usize,
    /// A bandwidth estimate per subscriber (`None`: off).
    pub bwe: Option<BweSettings>,
    /// Most remote candidates one peer connection takes.
    pub max_candidates: usize,
    /// A participant whose media is absent this long is removed (see `Worker::find_ghosts`).
    pub media_timeout: Duration,
    /// Test-only fault injection: every Receiver drops every Nth packet.
    pub fault_drop_every: Option<u32>,
    /// Test-only fault injection: every Nth video RTP datagram sent to subscribers is lost.
    pub fault_drop_sent_video_every: Option<u32>,
}

pub use congestion::BweSettings;

/// An ICE candidate as a client gives it (`RTCIceCandidateInit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCandidate {
    pub candidate: String,
    pub sdp_mid: Option<String>,
    pub sdp_mline_index: Option<u16>,
    pub username_fragment: Option<String>,
}

/// Why the engine refused a client's SDP. The peer connection is as it was before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpRefusal {
    /// It does not parse, or the stack cannot apply or answer it.
    Invalid,
    /// An answer when no offer is outstanding.
    Unexpected,
    /// The engine failed on its side.
    Internal,
}

/// What the engine tells the rest of the server about one participant, in the order it
/// happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The server's offer for the subscriber PC, to send to the client.
    SubscriberOffer { sdp: String },
    /// The answer to the client's publisher offer.
    PublisherAnswer { sdp: String },
    /// A client's offer (`pc: Publisher`) or answer (`pc: Subscriber`) was refused.
    SdpRefused {
        pc: PcKind,
        reason: SdpRefusal,
        message: String,
    },
    /// The first packet of a track the participant publishes arrived: it may be published.
    TrackOpened { track_id: String, kind: TrackKind },
    /// A message on its chat data channel, as received.
    ChannelMessage { text: bool, data: bytes::Bytes },
    /// Its media path is dead (the connection failed or never came up, its tracks fell
    /// silent): the participant should go.
    MediaLost { reason: &'static str },
    /// Its media could not start at all.
    Failed { message: String },
    /// The simulcast layers (rids) of a track it publishes that anyone needs now.
    Layers {
        track_id: String,
        active: Vec<String>,
    },
    /// Who speaks in its room now, loudest first (empty: nobody).
    Speakers { speakers: Arc<[Speaker]> },
    /// The connection quality of a participant of its room (itself included) changed.
    Quality {
        participant_id: String,
        quality: Quality,
    },
    /// A track it receives was paused because not even its lowest layer fits the
    /// participant's bandwidth, or resumed.
    TrackPaused {
        publisher_id: String,
        track_id: String,
        paused: bool,
    },
}

/// One participant speaking, and how loud (0–100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    pub participant_id: String,
    pub level: u8,
}

/// Where the engine's events go (the signaling layer). Called on a worker thread: it must
/// queue and return, never block or call back into the engine.
pub trait EventSink: Send + Sync {
    fn emit(&self, participant_id: &str, event: EngineEvent);
}

/// What workers hear from the rest of the server.
pub(crate) enum Inbox {
    Command(Command),
    /// A datagram that reached another worker's socket.
    Datagram(udp::Incoming, std::time::Instant),
    Shutdown,
}

/// A request to a worker (see [`WorkerHandle`]).
pub(crate) enum Command {
    AddParticipant {
        participant_id: String,
        /// Its room: who hears who speaks.
        room: Arc<str>,
    },
    RemoveParticipant {
        participant_id: String,
    },
    Subscribe {
        subscriber_id: String,
        publisher_id: String,
        track_id: String,
    },
    RemoveTrack {
        publisher_id: String,
        track_id: String,
    },
    SetMuted {
        publisher_id: String,
        track_id: String,
        muted: bool,
    },
    SendChannelMessage {
        participant_id: String,
        text: std::sync::Arc<str>,
    },
    /// How a subscriber shows one of the tracks it receives.
    Subscription {
        participant_id: String,
        track_id: String,
        view: crate::media::allocator::View,
    },
    PublisherOffer {
        participant_id: String,
        sdp: String,
    },
    SubscriberAnswer {
        participant_id: String,
        sdp: String,
    },
    Candidate {
        participant_id: String,
        pc: PcKind,
        candidate: Option<IceCandidate>,
    },
}

/// One worker's inbox: what the control plane asks of the peer connections it hosts. Calls
/// queue and return; the worker acts on them in the order they were made.
#[derive(Clone)]
pub struct WorkerHandle {
    pub index: usize,
    tx: mpsc::UnboundedSender<Inbox>,
}

impl WorkerHandle {
    fn command(&self, command: Command) {
        // Fails only once the worker has stopped (shutdown), when there is nothing to do.
        let _ = self.tx.send(Inbox::Command(command));
    }

    /// A participant joined: it gets its subscriber peer connection and the chat channel.
    pub fn add_participant(&self, participant_id: &str, room: &Arc<str>) {
        self.command(Command::AddParticipant {
            participant_id: participant_id.to_string(),
            room: room.clone(),
        });
    }

    /// Everything of a participant goes: its peer connections, the tracks it published and
    /// the tracks it received.
    pub fn remove_participant(&self, participant_id: &str) {
        self.command(Command::RemoveParticipant {
            participant_id: participant_id.to_string(),
        });
    }

    /// Forwards a published track to a subscriber.
    pub fn subscribe(&self, subscriber_id: &str, publisher_id: &str, track_id: &str) {
        self.command(Command::Subscribe {
            subscriber_id: subscriber_id.to_string(),
            publisher_id: publisher_id.to_string(),
            track_id: track_id.to_string(),
        });
    }

    /// A track is no longer published: its Receiver and every DownTrack of it go.
    pub fn remove_track(&self, publisher_id: &str, track_id: &str) {
        self.command(Command::RemoveTrack {
            publisher_id: publisher_id.to_string(),
            track_id: track_id.to_string(),
        });
    }

    /// A track's publisher muted it: its silence is no sign of a dead connection.
    pub fn set_muted(&self, publisher_id: &str, track_id: &str, muted: bool) {
        self.command(Command::SetMuted {
            publisher_id: publisher_id.to_string(),
            track_id: track_id.to_string(),
            muted,
        });
    }

    /// A text message on a participant's chat channel (kept a few seconds if it is not open
    /// yet).
    pub fn send_channel_message(&self, participant_id: &str, text: std::sync::Arc<str>) {
        self.command(Command::SendChannelMessage {
            participant_id: participant_id.to_string(),
            text,
        });
    }

    /// How a subscriber shows a track it receives (its size, or hidden): the layer it gets
    /// follows.
    pub fn subscription(
        &self,
        participant_id: &str,
        track_id: &str,
        view: crate::media::allocator::View,
    ) {
        self.command(Command::Subscription {
            participant_id: participant_id.to_string(),
            track_id: track_id.to_string(),
            view,
        });
    }

    pub fn publisher_offer(&self, participant_id: &str, sdp: String) {
        self.command(Command::PublisherOffer {
            participant_id: participant_id.to_string(),
            sdp,
        });
    }

    pub fn subscriber_answer(&self, participant_id: &str, sdp: String) {
        self.command(Command::SubscriberAnswer {
            participant_id: participant_id.to_string(),
            sdp,
        });
    }

    pub fn candidate(&self, participant_id: &str, pc: PcKind, candidate: Option<IceCandidate>) {
        self.command(Command::Candidate {
            participant_id: participant_id.to_string(),
            pc,
            candidate,
        });
    }
}

/// The running engine.
pub struct Engine {
    workers: Vec<WorkerHandle>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
    port: u16,
}

impl Engine {
    /// Binds the shared port on every worker and starts them; what happens to participants
    /// goes to `events`.
    pub fn start(
        config: EngineConfig,
        metrics: Arc<Metrics>,
        events: Arc<dyn EventSink>,
    ) -> Result<Engine, EngineError> {
        let workers = config.workers.clamp(1, 64);
        let reuse = workers > 1;
        if reuse && config.bind.port() != 0 {
            // SO_REUSEPORT would let this process share the port with another server that
            // holds it the same way: make sure nobody holds it first.
            drop(
                udp::bind(config.bind, false).map_err(|source| EngineError::Bind {
                    addr: config.bind,
                    source,
                })?,
            );
        }
        // The first socket settles the port (the configured one, or a free one for port 0);
        // the others join it.
        let first = udp::bind(config.bind, reuse).map_err(|source| EngineError::Bind {
            addr: config.bind,
            source,
        })?;
        let bound = first.local_addr().map_err(|source| EngineError::Bind {
            addr: config.bind,
            source,
        })?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(udp::bind(bound, true).map_err(|source| EngineError::Bind {
                addr: bound,
                source,
            })?);
        }
        let candidates: Vec<SocketAddr> = config
            .announce
            .iter()
            .map(|ip| SocketAddr::new(*ip, bound.port()))
            .collect();
        let srtp = parse_srtp_profiles(&config.srtp).map_err(EngineError::Rtc)?;
        let peers = Arc::new(PeerSettings::new(
            candidates.clone(),
            srtp,
            metrics.clone(),
            sctp_max_message_for_chat(config.max_chat_bytes),
            config.bwe,
        )?);
        let channels: Vec<_> = (0..workers).map(|_| mpsc::unbounded_channel()).collect();
        let handles: Vec<WorkerHandle> = channels
            .iter()
            .enumerate()
            .map(|(index, (tx, _))| WorkerHandle {
                index,
                tx: tx.clone(),
            })
            .collect();
        let senders: Vec<_> = channels.iter().map(|(tx, _)| tx.clone()).collect();
        let mut threads = Vec::new();
        for (index, ((_, rx), socket)) in channels.into_iter().zip(sockets).enumerate() {
            let setup = worker::Setup {
                index,
                socket,
                inbox: rx,
                others: senders.clone(),
                candidates: candidates.clone(),
                peers: peers.clone(),
                config: config.clone(),
                metrics: metrics.clone(),
                events: events.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-worker-{index}"))
                .spawn(move || worker::run(setup))
                .map_err(EngineError::Worker)?;
            threads.push(thread);
        }
        Ok(Engine {
            workers: handles,
            threads: Mutex::new(threads),
            next: AtomicUsize::new(0),
            port: bound.port(),
        })
    }

    /// The shared UDP port.
    pub fn udp_port(&self) -> u16 {
        self.port
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops every worker (closing their peer connections) and waits for them.
    pub fn shutdown(&self) {
        for w in &self.workers {
            let _ = w.tx.send(Inbox::Shutdown);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Engine {
    /// Where a new room's peer connections go: round robin, so rooms spread evenly over the
    /// workers. A room stays on one worker.
    pub fn place(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()
    }

    /// Worker `index`'s inbox (index from [`Engine::place`]; out of range wraps).
    pub fn worker(&self, index: usize) -> WorkerHandle {
        self.workers[index % self.workers.len()].clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
