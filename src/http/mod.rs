//! The HTTP surface: the web client, `/ws`, `/healthz`, `/metrics`, `/api/rooms`.

mod conn;
pub mod origin;
mod tls;
mod web;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::debug;

use crate::metrics::Metrics;
use crate::signal::limits::{Refused, SocketLimits};
use crate::{AppState, Error};

/// What the web client may do: its own ES modules and styles, WebSockets to any host (the
/// signaling URL may differ behind a proxy), media from streams; never framed by others.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; \
connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// Camera, microphone, screen capture and full screen for the page itself, nothing else.
const PERMISSIONS_POLICY: &str = "camera=(self), microphone=(self), display-capture=(self), \
fullscreen=(self), geolocation=(), payment=(), usb=()";

/// Seconds a refused client is asked to wait before trying again.
const RETRY_AFTER_SECS: &str = "5";

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(web::index))
        // No icon: answer quietly instead of a 404 in every browser console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/rooms", get(rooms))
        .route("/{file}", get(web::asset))
        .with_state(state.clone())
        .layer(Extension(SocketLimits::new(
            state.config.max_sockets,
            state.config.max_sockets_per_ip,
            state.config.join_rate_per_ip,
        )))
        .layer(header_layer(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(
            HeaderName::from_static("permissions-policy"),
            PERMISSIONS_POLICY,
        ))
}

/// Sets a header on every response that has none of its own.
fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

async fn ws(
    State(state): State<Arc<AppState>>,
    Extension(limits): Extension<Arc<SocketLimits>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let origin = text(header::ORIGIN);
    if !origin::allowed(origin, text(header::HOST), &state.config.allowed_origins) {
        Metrics::add(&state.metrics.origins_refused, 1);
        debug!(%peer, ?origin, "WebSocket from a foreign origin refused");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let permit = match limits.acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => {
            let (status, counter, message) = match refused {
                Refused::PerIp => (
                    StatusCode::TOO_MANY_REQUESTS,
                    &state.metrics.sockets_refused_per_ip,
                    "too many signaling sockets that have not joined from your address",
                ),
                Refused::Full => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    &state.metrics.sockets_refused_max,
                    "the server holds all the signaling sockets it may",
                ),
            };
            Metrics::add(counter, 1);
            debug!(%peer, ?refused, "WebSocket refused");
            return (status, [(header::RETRY_AFTER, RETRY_AFTER_SECS)], message).into_response();
        }
    };
    // A frame over our limit must still reach the session, which answers `too_large` and
    // closes with 1009; axum's own cap only guards against the absurd.
    let cap = state
        .config
        .max_message_bytes
        .saturating_mul(4)
        .max(1 << 20);
    upgrade
        .max_message_size(cap)
        .max_frame_size(cap)
        // The default 128 KiB read buffer is held by every socket for its whole life:
        // signaling reads a few hundred bytes at a time.
        .read_buffer_size(SIGNALING_READ_BUFFER)
        .on_upgrade(move |socket| crate::signal::websocket::run(socket, state, permit))
}

/// Bytes a signaling socket reads at a time (larger messages take several reads).
const SIGNALING_READ_BUFFER: usize = 4 * 1024;

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.accepting.load(Ordering::Acquire) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render_prometheus(),
    )
        .into_response()
}

async fn rooms(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.admin_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return (StatusCode::UNAUTHORIZED, "admin token required").into_response();
        }
    }
    Json(serde_json::json!({ "rooms": state.registry.snapshot() })).into_response()
}

/// Binds the listener and serves until `shutdown` turns true.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
) -> Result<(std::net::SocketAddr, JoinHandle<Result<(), Error>>), Error> {
    let addr = state.config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener.local_addr()?;
    let app = router(state.clone());
    let tls = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let task = tokio::spawn(async move {
        conn::accept_loop(|| listener.accept(), state, app, tls, shutdown).await;
        Ok(())
    });
    Ok((local, task))
}
