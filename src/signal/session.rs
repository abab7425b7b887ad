//! One client's session, whatever carries it: not joined, then joined until it leaves or is
//! dropped. It is where a client meets its room and the media engine: its requests become room
//! calls and engine commands; the room's events ([`RoomEvent`], through its [`Listener`]) and the
//! engine's ([`EngineEvent`]) become its messages, queued in its bounded outbox so that nothing
//! the room or the engine does ever waits on this client's network.
//!
//! The WebSocket adapter (`websocket.rs`) feeds it decoded client messages and engine events and
//! acts on the [`Flow`] it returns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::engine::{EngineEvent, IceCandidate, PcKind, SdpRefusal, WorkerHandle};
use crate::media::allocator::View;
use crate::metrics::Metrics;
use crate::ratelimit::TokenBucket;
use crate::room::{
    Listener, Participant, ParticipantInfo, PublishedTrack, Refusal, RefusalCode, Room, RoomEvent,
};
use crate::signal::chat;
use crate::signal::limits::SocketPermit;
use crate::signal::outbox::{Outbox, Overflow};
use crate::signal::protocol::{
    Candidate, ClientMessage, ErrorCode, IceServerInfo, ServerMessage, SpeakerInfo,
};
use crate::signal::sdp::{count as count_sdp, media_sections};
use crate::AppState;

/// Close codes (RFC 6455 and the protocol's own).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_LARGE: u16 = 1009;
pub const CLOSE_INTERNAL: u16 = 1011;
pub const CLOSE_UNAUTHORIZED: u16 = 4001;

/// The largest view size taken from a client, per side.
const MAX_VIEW_PIXELS: u32 = 16_384;

/// Close reason for a client that leaves too much unread.
pub const NOT_READING: &str = "not reading";

/// What the session decided after a message or event.
pub enum Flow {
    Continue,
    Close(u16, &'static str),
}

/// Set when the session must end from outside its own loop (its client does not read what
/// the room tells it): the adapter watches it.
#[derive(Default)]
pub struct Kick {
    kicked: AtomicBool,
    reason: Mutex<&'static str>,
    pub notify: Notify,
}

impl Kick {
    pub fn kick(&self, reason: &'static str) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_empty() {
                *r = reason;
            }
        }
        self.kicked.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> &'static str {
        self.reason.lock().map(|r| *r).unwrap_or("kicked")
    }
}

/// How a participant hears its room: each event becomes the message its client reads.
struct Mailbox {
    outbox: Outbox,
    kick: Arc<Kick>,
    room: String,
    me: ParticipantInfo,
    ice_servers: Vec<IceServerInfo>,
}

impl Listener for Mailbox {
    fn event(&self, event: RoomEvent) {
        let message = match event {
            RoomEvent::Joined { others } => ServerMessage::Joined {
                room: self.room.clone(),
                participant: self.me.clone(),
                participants: others,
                ice_servers: self.ice_servers.clone(),
            },
            RoomEvent::ParticipantJoined { participant } => {
                ServerMessage::ParticipantJoined { participant }
            }
            RoomEvent::ParticipantLeft { participant_id } => {
                ServerMessage::ParticipantLeft { participant_id }
            }
            RoomEvent::TrackPublished {
                participant_id,
                track,
            } => ServerMessage::TrackPublished {
                participant_id,
                track,
            },
            RoomEvent::TrackUnpublished {
                participant_id,
                track_id,
            } => ServerMessage::TrackUnpublished {
                participant_id,
                track_id,
            },
            RoomEvent::TrackMuted {
                participant_id,
                track_id,
                muted,
            } => ServerMessage::TrackMuted {
                participant_id,
                track_id,
                muted,
            },
        };
        // Never waits: a client that leaves too much unread (bytes or messages) is
        // disconnected rather than allowed to hold up the room or its memory.
        if let Err(Overflow::NotReading) = self.outbox.push(&message) {
            if !self.kick.is_kicked() {
                warn!(participant = %self.me.id, "client not reading its signaling socket; disconnecting");
            }
            self.kick.kick(NOT_READING);
        }
    }
}

struct Joined {
    participant: Arc<Participant>,
    room: Arc<Room>,
    worker: WorkerHandle,
    /// The tracks each publisher offer in flight sends, oldest first: once the engine answers
    /// one, the tracks it no longer sends are unpublished.
    offers_in_flight: VecDeque<Vec<String>>,
    chat: TokenBucket,
}

pub struct Session {
    state: Arc<AppState>,
    outbox: Outbox,
    kick: Arc<Kick>,
    joined: Option<Joined>,
    bucket: TokenBucket,
    offers: TokenBucket,
    /// Its place under the socket caps (counted against its address until it joins).
    permit: SocketPermit,
}

impl Session {
    pub fn new(state: Arc<AppState>, outbox: Outbox, permit: SocketPermit) -> Self {
        Session {
            bucket: TokenBucket::new(state.config.message_rate_per_sec),
            offers: TokenBucket::new(state.config.offer_rate_per_sec),
            state,
            outbox,
            kick: Arc::new(Kick::default()),
            joined: None,
            permit,
        }
    }

    pub fn kick(&self) -> Arc<Kick> {
        self.kick.clone()
    }

    pub fn is_joined(&self) -> bool {
        self.joined.is_some()
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn send(&self, message: ServerMessage) {
        // An overflow is seen by the adapter (`Outbox::overflowed`), which closes the socket.
        let _ = self.outbox.push(&message);
    }

    pub fn error(&self, code: ErrorCode, message: String, request_type: Option<String>) {
        Metrics::add(&self.state.metrics.signaling_errors, 1);
        debug!(?code, %message, "signaling error");
        self.send(ServerMessage::Error {
            code,
            message,
            request_type,
        });
    }

    /// One decoded client message. A join's engine events come back to the adapter through
    /// the queue this returns, and go to [`Session::on_engine_event`].
    pub fn on_message(
        &mut self,
        message: ClientMessage,
    ) -> (Flow, Option<mpsc::UnboundedReceiver<EngineEvent>>) {
        let flow = match message {
            ClientMessage::Ping => {
                self.send(ServerMessage::Pong);
                Flow::Continue
            }
            ClientMessage::Join { room, name, token } => return self.join(room, name, token),
            other if self.joined.is_none() => {
                self.error(
                    ErrorCode::NotJoined,
                    "send join first".into(),
                    Some(type_name(&other).into()),
                );
                Flow::Continue
            }
            ClientMessage::Leave => Flow::Close(CLOSE_NORMAL, "left"),
            ClientMessage::Offer { pc, sdp } => {
                self.publisher_offer(pc, sdp);
                Flow::Continue
            }
            ClientMessage::Answer { pc, sdp } => {
                self.subscriber_answer(pc, sdp);
                Flow::Continue
            }
            ClientMessage::Candidate { pc, candidate } => {
                if let Some(j) = &self.joined {
                    j.worker
                        .candidate(&j.participant.id, pc, candidate.map(IceCandidate::from));
                }
                Flow::Continue
            }
            ClientMessage::Subscription {
                track_id,
                enabled,
                width,
                height,
            } => {
                if let Some(j) = &self.joined {
                    // A size past any screen is a size nobody shows: treat it as the largest.
                    let view = View {
                        enabled,
                        width: width.min(MAX_VIEW_PIXELS),
                        height: height.min(MAX_VIEW_PIXELS),
                    };
                    j.worker.subscription(&j.participant.id, &track_id, view);
                }
                Flow::Continue
            }
            ClientMessage::Mute { track_id, muted } => {
                if let Some(j) = &self.joined {
                    if !j.room.set_muted(&j.participant.id, &track_id, muted) {
                        self.error(
                            ErrorCode::BadRequest,
                            format!("you publish no track {track_id:?}"),
                            Some("mute".into()),
                        );
                    }
                }
                Flow::Continue
            }
        };
        (flow, None)
    }

    pub fn max_message_bytes(&self) -> usize {
        self.state.config.max_message_bytes
    }

    /// A frame over `--max-message-bytes`: `too_large` (the adapter then closes).
    pub fn frame_too_large(&self, len: usize) {
        self.count_too_large();
        self.error(
            ErrorCode::TooLarge,
            format!(
                "message of {len} bytes is over the limit of {}",
                self.state.config.max_message_bytes
            ),
            None,
        );
    }

    pub fn count_too_large(&self) {
        Metrics::add(&self.state.metrics.frames_too_large, 1);
    }

    pub fn count_invalid_utf8(&self) {
        Metrics::add(&self.state.metrics.frames_invalid_utf8, 1);
    }

    /// Whether the message rate allows one more message now.
    pub fn within_rate(&mut self) -> bool {
        self.bucket.allow(Instant::now())
    }

    fn join(
        &mut self,
        room: String,
        name: String,
        token: Option<String>,
    ) -> (Flow, Option<mpsc::UnboundedReceiver<EngineEvent>>) {
        let request_type = Some("join".to_string());
        if self.joined.is_some() {
            self.error(
                ErrorCode::AlreadyJoined,
                "this socket has joined already".into(),
                request_type,
            );
            return (Flow::Continue, None);
        }
        if let Some(expected) = &self.state.config.auth_token {
            if token.as_deref() != Some(expected.as_str()) {
                self.error(
                    ErrorCode::Unauthorized,
                    "missing or wrong token".into(),
                    request_type,
                );
                return (Flow::Close(CLOSE_UNAUTHORIZED, "unauthorized"), None);
            }
        }
        if !valid_room(&room) {
            self.error(
                ErrorCode::InvalidRoom,
                "room must be 1 to 64 of A-Z a-z 0-9 _ -".into(),
                request_type,
            );
            return (Flow::Continue, None);
        }
        let Some(name) = normalize_name(&name) else {
            self.error(
                ErrorCode::InvalidName,
                "name must be 1 to 64 characters after trimming, with no control characters".into(),
                request_type,
            );
            return (Flow::Continue, None);
        };
        if !self.permit.allow_join(Instant::now()) {
            Metrics::add(&self.state.metrics.joins_rate_limited, 1);
            self.error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} joins a second from your address; try again in a moment",
                    self.state.config.join_rate_per_ip
                ),
                request_type,
            );
            return (Flow::Continue, None);
        }
        let id = new_participant_id();
        let mailbox = Mailbox {
            outbox: self.outbox.clone(),
            kick: self.kick.clone(),
            room: room.clone(),
            me: ParticipantInfo {
                id: id.clone(),
                name: name.clone(),
            },
            ice_servers: self
                .state
                .config
                .ice_servers
                .iter()
                .map(IceServerInfo::from)
                .collect(),
        };
        let participant = Arc::new(Participant::new(id.clone(), name, Arc::new(mailbox)));
        // Before the room hears of it: the engine's first event may follow at once.
        let events = self.state.sessions.add(&id);
        let room = match self.state.registry.join(&room, &participant) {
            Ok(room) => room,
            Err(refusal) => {
                self.state.sessions.remove(&id);
                self.refused(&refusal, request_type);
                return (Flow::Continue, None);
            }
        };
        Metrics::add(&self.state.metrics.joins, 1);
        self.permit.joined();
        let span = tracing::Span::current();
        span.record("room", room.name.as_str());
        span.record("participant", participant.id.as_str());
        info!(name = %participant.name, "joined");
        let worker = self.state.engine.worker(room.host());
        self.joined = Some(Joined {
            participant,
            room,
            worker,
            offers_in_flight: VecDeque::new(),
            chat: TokenBucket::new(self.state.config.message_rate_per_sec),
        });
        (Flow::Continue, Some(events))
    }

    fn refused(&self, refusal: &Refusal, request_type: Option<String>) {
        let code = match refusal.code {
            RefusalCode::Full => ErrorCode::RoomFull,
            RefusalCode::Closing => ErrorCode::Internal,
            RefusalCode::NotJoined => ErrorCode::NotJoined,
            RefusalCode::BadRequest => ErrorCode::BadRequest,
        };
        self.error(code, refusal.message.clone(), request_type);
    }

    fn publisher_offer(&mut self, pc_kind: PcKind, sdp: String) {
        if pc_kind != PcKind::Publisher {
            self.error(
                ErrorCode::BadRequest,
                "only the publisher PC is offered by the client".into(),
                Some("offer".into()),
            );
            return;
        }
        if !self.sdp_within_limits(&sdp, "offer") {
            return;
        }
        if !self.offers.allow(Instant::now()) {
            Metrics::add(&self.state.metrics.offers_rate_limited, 1);
            self.error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} offers a second; slow down",
                    self.state.config.offer_rate_per_sec
                ),
                Some("offer".into()),
            );
            return;
        }
        let sending: Vec<String> = media_sections(&sdp)
            .into_iter()
            .filter(|s| s.sending)
            .filter_map(|s| s.track_id)
            .collect();
        let max_tracks = self.state.config.max_tracks_per_participant;
        if sending.len() > max_tracks {
            self.error(
                ErrorCode::BadRequest,
                format!("a participant may publish at most {max_tracks} tracks"),
                Some("offer".into()),
            );
            return;
        }
        let Some(j) = &mut self.joined else {
            return;
        };
        // From now on a `mute` for these tracks is kept until their media arrives.
        j.room.announce(&j.participant.id, &sending);
        j.offers_in_flight.push_back(sending);
        j.worker.publisher_offer(&j.participant.id, sdp);
    }

    fn subscriber_answer(&mut self, pc: PcKind, sdp: String) {
        if !self.sdp_within_limits(&sdp, "answer") {
            return;
        }
        match (pc, &self.joined) {
            (PcKind::Subscriber, Some(j)) => j.worker.subscriber_answer(&j.participant.id, sdp),
            _ => self.error(
                ErrorCode::BadRequest,
                "only the subscriber PC takes an answer; the publisher PC is offered by the client"
                    .into(),
                Some("answer".into()),
            ),
        }
    }

    /// Refuses, before the media engine parses it, an SDP with more candidates or media
    /// sections than any real client sends: each costs the room's worker thread time.
    fn sdp_within_limits(&self, sdp: &str, request_type: &str) -> bool {
        let counts = count_sdp(sdp);
        let config = &self.state.config;
        let problem = if counts.candidates > config.max_candidates_per_offer {
            format!(
                "{} a=candidate lines; at most {} are accepted in one {request_type}",
                counts.candidates, config.max_candidates_per_offer
            )
        } else if request_type == "offer" && counts.media_sections > config.max_media_sections {
            format!(
                "{} media sections; at most {} are accepted in one offer",
                counts.media_sections, config.max_media_sections
            )
        } else {
            return true;
        };
        Metrics::add(&self.state.metrics.offers_refused, 1);
        self.error(ErrorCode::BadRequest, problem, Some(request_type.into()));
        false
    }

    /// What the engine says about this participant.
    pub fn on_engine_event(&mut self, event: EngineEvent) -> Flow {
        let Some(j) = &mut self.joined else {
            return Flow::Continue;
        };
        match event {
            EngineEvent::SubscriberOffer { sdp } => self.send(ServerMessage::Offer {
                pc: PcKind::Subscriber,
                sdp,
            }),
            EngineEvent::PublisherAnswer { sdp } => {
                let sending = j.offers_in_flight.pop_front().unwrap_or_default();
                let _ = self.outbox.push(&ServerMessage::Answer {
                    pc: PcKind::Publisher,
                    sdp,
                });
                // A track the new offer no longer sends is unpublished at once, whatever the
                // transport does with it later.
                for track_id in j.room.tracks_of(&j.participant.id) {
                    if !sending.contains(&track_id) {
                        j.room.unpublish(&j.participant.id, &track_id);
                    }
                }
            }
            EngineEvent::SdpRefused {
                pc,
                reason,
                message,
            } => {
                let request_type = match pc {
                    PcKind::Publisher => {
                        j.offers_in_flight.pop_front();
                        "offer"
                    }
                    PcKind::Subscriber => "answer",
                };
                let code = match reason {
                    SdpRefusal::Invalid => ErrorCode::InvalidSdp,
                    SdpRefusal::Unexpected => ErrorCode::BadRequest,
                    SdpRefusal::Internal => ErrorCode::Internal,
                };
                self.error(code, message, Some(request_type.into()));
            }
            EngineEvent::TrackOpened { track_id, kind } => {
                let track =
                    PublishedTrack::new(j.participant.id.clone(), track_id.clone(), kind, false);
                if let Err(refusal) = j.room.publish(track) {
                    // Its media goes nowhere.
                    j.worker.remove_track(&j.participant.id, &track_id);
                    self.refused(&refusal, Some("offer".into()));
                }
            }
            EngineEvent::ChannelMessage { text, data } => self.on_chat(text, &data),
            EngineEvent::MediaLost { reason } => return Flow::Close(CLOSE_POLICY, reason),
            EngineEvent::Layers { track_id, active } => {
                self.send(ServerMessage::Layers { track_id, active })
            }
            EngineEvent::Quality {
                participant_id,
                quality,
            } => self.send(ServerMessage::Quality {
                participant_id,
                quality,
            }),
            EngineEvent::Speakers { speakers } => self.send(ServerMessage::Speakers {
                speakers: speakers
                    .iter()
                    .map(|s| SpeakerInfo {
                        participant_id: s.participant_id.clone(),
                        level: f32::from(s.level) / 100.0,
                    })
                    .collect(),
            }),
            EngineEvent::TrackPaused {
                publisher_id,
                track_id,
                paused,
            } => self.send(ServerMessage::TrackPaused {
                participant_id: publisher_id,
                track_id,
                paused,
            }),
            EngineEvent::Failed { message } => {
                self.error(ErrorCode::Internal, message, Some("join".into()));
                return Flow::Close(CLOSE_INTERNAL, "internal error");
            }
        }
        Flow::Continue
    }

    /// A message on the chat channel: relayed by the room, or refused on the same channel.
    fn on_chat(&mut self, is_text: bool, data: &[u8]) {
        let Some(j) = &mut self.joined else {
            return;
        };
        let reply = if !j.chat.allow(Instant::now()) {
            Some(chat::error_json("rate_limited", "too many chat messages"))
        } else {
            match chat::parse_chat(is_text, data, self.state.config.max_chat_bytes) {
                Ok(text) => {
                    if j.room.chat(&j.participant.id, text) {
                        Metrics::add(&self.state.metrics.chat_messages, 1);
                    }
                    None
                }
                Err(reason) => {
                    debug!(%reason, "chat message refused");
                    Some(chat::error_json("bad_request", &reason))
                }
            }
        };
        if let Some(reply) = reply {
            j.worker
                .send_channel_message(&j.participant.id, Arc::from(reply));
        }
    }

    /// Tears down everything of this participant and tells the others.
    pub fn leave(&mut self) {
        let Some(j) = self.joined.take() else { return };
        // The room tells the media engine, which closes both peer connections.
        self.state.registry.leave(&j.room, &j.participant.id);
        self.state.sessions.remove(&j.participant.id);
        info!("left");
    }
}

impl From<Candidate> for IceCandidate {
    fn from(c: Candidate) -> Self {
        IceCandidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
        }
    }
}

/// Room names: 1–64 of `A-Za-z0-9_-`.
pub fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Names: 1–64 characters after trimming, no control characters.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.trim();
    let chars = name.chars().count();
    if (1..=64).contains(&chars) && !name.chars().any(char::is_control) {
        Some(name.to_string())
    } else {
        None
    }
}

fn new_participant_id() -> String {
    format!("p{:016x}", rand::random::<u64>())
}

pub fn type_name(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::Subscription { .. } => "subscription",
        ClientMessage::Leave => "leave",
        ClientMessage::Ping => "ping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_and_name_rules() {
        assert!(valid_room("demo_1-A"));
        assert!(!valid_room(""));
        assert!(!valid_room("has space"));
        assert!(!valid_room("ünï"));
        assert!(!valid_room(&"r".repeat(65)));
        assert_eq!(normalize_name("  Alice  ").as_deref(), Some("Alice"));
        assert_eq!(normalize_name("Zoë 🎉").as_deref(), Some("Zoë 🎉"));
        assert_eq!(normalize_name("   "), None);
        assert_eq!(normalize_name("bad\u{7}name"), None);
        assert!(normalize_name(&"é".repeat(64)).is_some());
        assert!(normalize_name(&"é".repeat(65)).is_none());
    }
}
