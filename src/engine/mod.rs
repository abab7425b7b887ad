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
//! The control plane talks to a worker through its inbox (commands, queued under the room's
//! lock so they arrive in the room's order) and hears back through the participant's
//! signaling outbox and the room.

pub mod demux;
pub mod feedback;
pub mod peer;
pub mod srtp;
pub mod timers;
pub mod udp;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::SrtpWriter;
use crate::media::downtrack::QueueLimits;
use crate::metrics::Metrics;
use crate::room::{MediaPlacer, MediaPlane, Participant, PublishedTrack, Room};
use crate::signal::protocol::{Candidate, PcKind};

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
    pub chat_rate_per_sec: u32,
    /// Most remote candidates one peer connection takes.
    pub max_candidates: usize,
    /// A participant whose media is absent this long is removed (see `Worker::find_ghosts`).
    pub media_timeout: Duration,
    /// Test-only fault injection: every Receiver drops every Nth packet.
    pub fault_drop_every: Option<u32>,
    /// Test-only fault injection: every Nth video RTP datagram sent to subscribers is lost.
    pub fault_drop_sent_video_every: Option<u32>,
}

/// What workers hear from the rest of the server.
pub(crate) enum Inbox {
    Command(Command),
    /// A datagram that reached another worker's socket.
    Datagram(udp::Incoming, std::time::Instant),
    Shutdown,
}

/// A room's request to its worker (see [`MediaPlane`]).
pub(crate) enum Command {
    AddParticipant {
        participant: Arc<Participant>,
        room: Arc<Room>,
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
    PublisherOffer {
        participant_id: String,
        sdp: String,
        sending: Vec<String>,
    },
    SubscriberAnswer {
        participant_id: String,
        sdp: String,
    },
    Candidate {
        participant_id: String,
        pc: PcKind,
        candidate: Option<Candidate>,
    },
}

/// One worker's inbox.
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
}

impl MediaPlane for WorkerHandle {
    fn add_participant(&self, participant: &Arc<Participant>, room: &Arc<Room>) {
        self.command(Command::AddParticipant {
            participant: participant.clone(),
            room: room.clone(),
        });
    }

    fn remove_participant(&self, participant_id: &str) {
        self.command(Command::RemoveParticipant {
            participant_id: participant_id.to_string(),
        });
    }

    fn subscribe(&self, subscriber_id: &str, track: &PublishedTrack) {
        self.command(Command::Subscribe {
            subscriber_id: subscriber_id.to_string(),
            publisher_id: track.publisher_id.clone(),
            track_id: track.track_id.clone(),
        });
    }

    fn remove_track(&self, publisher_id: &str, track_id: &str) {
        self.command(Command::RemoveTrack {
            publisher_id: publisher_id.to_string(),
            track_id: track_id.to_string(),
        });
    }

    fn publisher_offer(&self, participant_id: &str, sdp: String, sending: Vec<String>) {
        self.command(Command::PublisherOffer {
            participant_id: participant_id.to_string(),
            sdp,
            sending,
        });
    }

    fn subscriber_answer(&self, participant_id: &str, sdp: String) {
        self.command(Command::SubscriberAnswer {
            participant_id: participant_id.to_string(),
            sdp,
        });
    }

    fn candidate(&self, participant_id: &str, pc: PcKind, candidate: Option<Candidate>) {
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
    /// Binds the shared port on every worker and starts them.
    pub fn start(config: EngineConfig, metrics: Arc<Metrics>) -> Result<Engine, EngineError> {
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

impl MediaPlacer for Engine {
    /// Round robin: rooms spread evenly over the workers.
    fn place(&self, _room_name: &str) -> Arc<dyn MediaPlane> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        Arc::new(self.workers[n].clone())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
