//! The WebSocket adapter: one upgraded `/ws` socket carrying one [`Session`].
//!
//! The socket is read here (frames decoded into client messages, the session's engine events
//! taken as they come) and written by a separate task fed from the session's outbox, bounded in
//! messages and bytes. Close codes and keepalive are the WebSocket's.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite;
use tracing::{debug, Instrument};

use crate::engine::EngineEvent;
use crate::metrics::Metrics;
use crate::signal::limits::SocketPermit;
use crate::signal::outbox::{Outbox, OutboxReader};
use crate::signal::protocol::{decode_client, ErrorCode};
use crate::signal::session::{
    Flow, Session, CLOSE_INTERNAL, CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL,
    CLOSE_TOO_LARGE, NOT_READING,
};
use crate::AppState;

/// How long the writer may take to flush the last messages and the close frame.
const WRITER_GRACE: Duration = Duration::from_secs(5);

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

async fn next_event(
    events: &mut Option<mpsc::UnboundedReceiver<EngineEvent>>,
) -> Option<EngineEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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

    let mut session = Session::new(state.clone(), outbox, permit);
    let kick = session.kick();
    let mut events = None;
    let idle = state.config.idle_timeout;
    let join_deadline = tokio::time::Instant::now() + state.config.join_timeout;
    let close = loop {
        let unjoined = !session.is_joined();
        let frame = tokio::select! {
            frame = tokio::time::timeout(idle, stream.next()) => frame,
            _ = kick.notify.notified() => break (CLOSE_POLICY, kick.reason()),
            Some(event) = next_event(&mut events) => {
                match session.on_engine_event(event) {
                    Flow::Continue => continue,
                    Flow::Close(code, reason) => break (code, reason),
                }
            }
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
            Ok(Some(Err(e))) => break socket_error(&session, &e),
            Ok(Some(Ok(frame))) => frame,
        };
        let flow = match frame {
            Message::Text(text) => {
                // A panic on some input must not skip `leave`, which frees this participant
                // and tells the others.
                match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    on_text(&mut session, text.as_str())
                })) {
                    Ok((flow, joined)) => {
                        if joined.is_some() {
                            events = joined;
                        }
                        flow
                    }
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
        if session.outbox().overflowed() {
            break (CLOSE_POLICY, NOT_READING);
        }
    };
    session.leave();
    let not_reading = close.1 == NOT_READING || session.outbox().overflowed();
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

/// One text frame: its size, the message rate, then the message itself.
fn on_text(
    session: &mut Session,
    text: &str,
) -> (Flow, Option<mpsc::UnboundedReceiver<EngineEvent>>) {
    if text.len() > session.max_message_bytes() {
        session.frame_too_large(text.len());
        return (Flow::Close(CLOSE_TOO_LARGE, "message too large"), None);
    }
    if !session.within_rate() {
        session.error(
            ErrorCode::RateLimited,
            "too many messages; slow down".into(),
            None,
        );
        return (Flow::Continue, None);
    }
    match decode_client(text) {
        Ok(message) => session.on_message(message),
        Err(e) => {
            session.error(e.code, e.message, e.request_type);
            (Flow::Continue, None)
        }
    }
}

/// What a failed read means for the close: RFC 6455's code for the fault, after an error the
/// client can act on when there is one.
fn socket_error(session: &Session, e: &axum::Error) -> (u16, &'static str) {
    let ws_error =
        std::error::Error::source(e).and_then(|source| source.downcast_ref::<tungstenite::Error>());
    let text = e.to_string();
    match ws_error {
        Some(tungstenite::Error::Utf8(_)) => {
            session.count_invalid_utf8();
            session.error(
                ErrorCode::BadRequest,
                "text frame is not valid UTF-8".into(),
                None,
            );
            (CLOSE_INVALID_DATA, "invalid UTF-8")
        }
        // axum refuses frames over its own cap (1 MiB or more) before we see them.
        Some(tungstenite::Error::Capacity(_)) => {
            session.count_too_large();
            session.error(ErrorCode::TooLarge, format!("frame refused: {text}"), None);
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
