//! One signaling socket's state machine: not joined, then joined until leave or drop.
//!
//! The socket is read here and written by a separate task fed from the participant's
//! outbox, bounded in messages and bytes, so nothing the room does ever waits on this
//! client's network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite;
use tracing::{debug, info, Instrument};

use crate::metrics::Metrics;
use crate::ratelimit::TokenBucket;
use crate::room::{Participant, Room};
use crate::signal::limits::SocketPermit;
use crate::signal::outbox::{Outbox, OutboxReader};
use crate::signal::protocol::{
    decode_client, ClientMessage, ErrorCode, IceServerInfo, PcKind, ServerMessage,
};
use crate::signal::sdp::{count as count_sdp, media_sections};
use crate::AppState;

/// Close codes the server uses.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_LARGE: u16 = 1009;
const CLOSE_UNAUTHORIZED: u16 = 4001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_INTERNAL: u16 = 1011;

/// Close reason for a client that leaves too much unread.
const NOT_READING: &str = "not reading";

/// How long the writer may take to flush the last messages and the close frame.
const WRITER_GRACE: Duration = Duration::from_secs(5);

struct Joined {
    participant: Arc<Participant>,
    room: Arc<Room>,
}

/// What the reader decided after a frame.
enum Flow {
    Continue,
    Close(u16, &'static str),
}

struct Session {
    state: Arc<AppState>,
    outbox: Outbox,
    joined: Option<Joined>,
    bucket: TokenBucket,
    offers: TokenBucket,
    /// Its place under the socket caps (counted against its address until it joins).
    permit: SocketPermit,
}

/// Serves one upgraded socket; `permit` is its place under the socket caps, held until the
/// socket is gone.
pub async fn run(socket: WebSocket, state: Arc<AppState>, permit: SocketPermit) {
    let span = tracing::info_span!(
        "session",
        room = tracing::field::Empty,
        participant = tracing::field::Empty
    );
    serve(socket, state, permit).instrument(span).await;
}

async fn serve(socket: WebSocket, state: Arc<AppState>, permit: SocketPermit) {
    Metrics::inc(&state.metrics.websockets);
    let (sink, mut stream) = socket.split();
    let (outbox, outbox_rx) = Outbox::channel(
        state.config.signaling_queue_messages,
        state.config.max_unsent_bytes,
        state.metrics.clone(),
    );
    let (close_tx, close_rx) = oneshot::channel::<(u16, &'static str)>();
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox_rx,
        close_rx,
        state.config.ping_interval,
    ));
    let mut writer_done = false;

    let mut session = Session {
        bucket: TokenBucket::new(state.config.message_rate_per_sec),
        offers: TokenBucket::new(state.config.offer_rate_per_sec),
        state: state.clone(),
        outbox,
        joined: None,
        permit,
    };
    let idle = state.config.idle_timeout;
    let join_deadline = tokio::time::Instant::now() + state.config.join_timeout;
    let close = loop {
        let kicked = async {
            match &session.joined {
                Some(j) => j.participant.kick_notify.notified().await,
                None => std::future::pending().await,
            }
        };
        let unjoined = session.joined.is_none();
        let frame = tokio::select! {
            frame = tokio::time::timeout(idle, stream.next()) => frame,
            _ = kicked => break (CLOSE_POLICY, session.kick_reason()),
            // The writer ends only when the socket failed under it (a write stuck past
            // --write-timeout, say): nothing more can reach this client.
            _ = &mut writer => {
                writer_done = true;
                break (CLOSE_POLICY, NOT_READING);
            }
            _ = tokio::time::sleep_until(join_deadline), if unjoined => {
                Metrics::add(&state.metrics.join_timeouts, 1);
                session.error(
                    ErrorCode::NotJoined,
                    format!(
                        "no join within {:?} of connecting; closing",
                        state.config.join_timeout
                    ),
                    None,
                );
                break (CLOSE_POLICY, "join timeout");
            }
        };
        let frame = match frame {
            Err(_) => {
                debug!("signaling peer silent; dropping");
                break (CLOSE_POLICY, "idle timeout");
            }
            Ok(None) => break (CLOSE_NORMAL, "closed"),
            Ok(Some(Err(e))) => break session.socket_error(&e),
            Ok(Some(Ok(frame))) => frame,
        };
        let flow = match frame {
            Message::Text(text) => {
                // A panic deep in the WebRTC stack on some input must not skip `leave`, which
                // frees this participant and tells the others.
                match AssertUnwindSafe(session.on_text(text.as_str()))
                    .catch_unwind()
                    .await
                {
                    Ok(flow) => flow,
                    Err(_) => {
                        tracing::error!("handling a signaling message panicked");
                        session.error(ErrorCode::Internal, "internal error".into(), None);
                        Flow::Close(CLOSE_INTERNAL, "internal error")
                    }
                }
            }
            Message::Binary(_) => {
                session.error(
                    ErrorCode::BadRequest,
                    "binary frames are not part of the protocol; send JSON text".into(),
                    None,
                );
                Flow::Continue
            }
            Message::Close(_) => break (CLOSE_NORMAL, "closed"),
            // Pings are answered by axum; any frame proves the peer alive.
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
        };
        if let Flow::Close(code, reason) = flow {
            break (code, reason);
        }
        // Replies it provoked and did not read (pongs, errors) count against a client too.
        if session.outbox.overflowed() {
            break (CLOSE_POLICY, NOT_READING);
        }
    };
    session.leave().await;
    let not_reading = close.1 == NOT_READING || session.outbox.overflowed();
    let _ = close_tx.send(close);
    drop(session);
    if !writer_done {
        // A client that stopped reading holds the writer in a send: nothing it could still
        // read is worth waiting for. Others get a moment to flush the close.
        let abort = writer.abort_handle();
        if not_reading || tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
            abort.abort();
        }
    }
    Metrics::dec(&state.metrics.websockets);
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outbox: OutboxReader,
    mut close: oneshot::Receiver<(u16, &'static str)>,
    ping_interval: Duration,
) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.tick().await;
    let reason = loop {
        tokio::select! {
            reason = &mut close => break reason.ok(),
            message = outbox.recv() => match message {
                Some(text) => {
                    if send_text(&mut sink, &outbox, text).await.is_err() {
                        return;
                    }
                }
                // Every sender is gone: the session is ending and is about to say why.
                None => break (&mut close).await.ok(),
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    };
    // Flush what was queued (the error that explains the close, say), then close.
    while let Some(text) = outbox.try_recv() {
        if send_text(&mut sink, &outbox, text).await.is_err() {
            return;
        }
    }
    let (code, reason) = reason.unwrap_or((CLOSE_NORMAL, "closed"));
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
    let _ = sink.close().await;
}

/// Writes one queued message; its bytes stop counting as unsent once the kernel took them.
async fn send_text(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    outbox: &OutboxReader,
    text: String,
) -> Result<(), axum::Error> {
    let len = text.len();
    let result = sink.send(Message::Text(Utf8Bytes::from(text))).await;
    outbox.sent(len);
    result
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

impl Session {
    fn send(&self, message: ServerMessage) {
        // An overflow is seen by the read loop (`overflowed`), which closes the socket.
        let _ = self.outbox.push(&message);
    }

    /// What a failed read means for the close: RFC 6455's code for the fault, after an error
    /// the client can act on when there is one.
    fn socket_error(&self, e: &axum::Error) -> (u16, &'static str) {
        let ws_error = std::error::Error::source(e)
            .and_then(|source| source.downcast_ref::<tungstenite::Error>());
        let text = e.to_string();
        match ws_error {
            Some(tungstenite::Error::Utf8(_)) => {
                Metrics::add(&self.state.metrics.frames_invalid_utf8, 1);
                self.error(
                    ErrorCode::BadRequest,
                    "text frame is not valid UTF-8".into(),
                    None,
                );
                (CLOSE_INVALID_DATA, "invalid UTF-8")
            }
            // axum refuses frames over its own cap (1 MiB or more) before we see them.
            Some(tungstenite::Error::Capacity(_)) => {
                Metrics::add(&self.state.metrics.frames_too_large, 1);
                self.error(ErrorCode::TooLarge, format!("frame refused: {text}"), None);
                (CLOSE_TOO_LARGE, "message too large")
            }
            Some(tungstenite::Error::Protocol(_)) => {
                debug!(error = %text, "WebSocket protocol violation");
                (CLOSE_PROTOCOL, "protocol error")
            }
            _ => {
                debug!(error = %text, "signaling socket error");
                (CLOSE_NORMAL, "socket error")
            }
        }
    }

    fn error(&self, code: ErrorCode, message: String, request_type: Option<String>) {
        Metrics::add(&self.state.metrics.signaling_errors, 1);
        debug!(?code, %message, "signaling error");
        self.send(ServerMessage::Error {
            code,
            message,
            request_type,
        });
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        if text.len() > self.state.config.max_message_bytes {
            Metrics::add(&self.state.metrics.frames_too_large, 1);
            self.error(
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes is over the limit of {}",
                    text.len(),
                    self.state.config.max_message_bytes
                ),
                None,
            );
            return Flow::Close(CLOSE_TOO_LARGE, "message too large");
        }
        if !self.bucket.allow(Instant::now()) {
            self.error(
                ErrorCode::RateLimited,
                "too many messages; slow down".into(),
                None,
            );
            return Flow::Continue;
        }
        let message = match decode_client(text) {
            Ok(message) => message,
            Err(e) => {
                self.error(e.code, e.message, e.request_type);
                return Flow::Continue;
            }
        };
        match message {
            ClientMessage::Ping => {
                self.send(ServerMessage::Pong);
                Flow::Continue
            }
            ClientMessage::Join { room, name, token } => self.join(room, name, token).await,
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
                if !self.sdp_within_limits(&sdp, "answer") {
                    return Flow::Continue;
                }
                match (pc, &self.joined) {
                    (PcKind::Subscriber, Some(j)) => {
                        j.room.media().subscriber_answer(&j.participant.id, sdp);
                    }
                    _ => self.error(
                        ErrorCode::BadRequest,
                        "only the subscriber PC takes an answer; the publisher PC is offered by the client".into(),
                        Some("answer".into()),
                    ),
                }
                Flow::Continue
            }
            ClientMessage::Candidate { pc, candidate } => {
                if let Some(j) = &self.joined {
                    j.room.media().candidate(&j.participant.id, pc, candidate);
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
        }
    }

    async fn join(&mut self, room: String, name: String, token: Option<String>) -> Flow {
        let request_type = Some("join".to_string());
        if self.joined.is_some() {
            self.error(
                ErrorCode::AlreadyJoined,
                "this socket has joined already".into(),
                request_type,
            );
            return Flow::Continue;
        }
        if let Some(expected) = &self.state.config.auth_token {
            if token.as_deref() != Some(expected.as_str()) {
                self.error(
                    ErrorCode::Unauthorized,
                    "missing or wrong token".into(),
                    request_type,
                );
                return Flow::Close(CLOSE_UNAUTHORIZED, "unauthorized");
            }
        }
        if !valid_room(&room) {
            self.error(
                ErrorCode::InvalidRoom,
                "room must be 1 to 64 of A-Z a-z 0-9 _ -".into(),
                request_type,
            );
            return Flow::Continue;
        }
        let Some(name) = normalize_name(&name) else {
            self.error(
                ErrorCode::InvalidName,
                "name must be 1 to 64 characters after trimming, with no control characters".into(),
                request_type,
            );
            return Flow::Continue;
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
            return Flow::Continue;
        }
        let participant = Arc::new(Participant::new(
            new_participant_id(),
            name,
            self.outbox.clone(),
        ));
        let ice_servers: Vec<IceServerInfo> = self
            .state
            .config
            .ice_servers
            .iter()
            .map(IceServerInfo::from)
            .collect();
        let room_name = room.clone();
        let me = participant.info();
        let joined = self
            .state
            .registry
            .join(&room, &participant, move |participants| {
                ServerMessage::Joined {
                    room: room_name,
                    participant: me,
                    participants,
                    ice_servers,
                }
            });
        let room = match joined {
            Ok(room) => room,
            Err(refusal) => {
                self.error(refusal.code, refusal.message, request_type);
                return Flow::Continue;
            }
        };
        Metrics::add(&self.state.metrics.joins, 1);
        self.permit.joined();
        let span = tracing::Span::current();
        span.record("room", room.name.as_str());
        span.record("participant", participant.id.as_str());
        info!(name = %participant.name, "joined");
        self.joined = Some(Joined { participant, room });
        Flow::Continue
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
        let Some(j) = &self.joined else {
            return;
        };
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
        // From now on a `mute` for these tracks is kept until their media arrives.
        j.room.announce(&j.participant.id, &sending);
        j.room
            .media()
            .publisher_offer(&j.participant.id, sdp, sending);
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

    fn kick_reason(&self) -> &'static str {
        self.joined
            .as_ref()
            .map_or("closed", |j| j.participant.kick_reason())
    }

    /// Tears down everything of this participant and tells the others.
    async fn leave(&mut self) {
        let Some(j) = self.joined.take() else { return };
        // The room tells the media engine, which closes both peer connections.
        self.state.registry.leave(&j.room, &j.participant.id);
        info!("left");
    }
}

fn type_name(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Mute { .. } => "mute",
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
