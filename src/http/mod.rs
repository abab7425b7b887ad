//! The HTTP surface: the web client, `/ws`, `/healthz`, `/metrics`, `/api/rooms`.

mod tls;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{AppState, Error};

/// The web client, embedded so the server serves it from any working directory.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const SIGNALING_JS: &str = include_str!("../../web/signaling.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");
const LAYOUT_JS: &str = include_str!("../../web/layout.js");
const CHAT_JS: &str = include_str!("../../web/chat.js");
const MEDIA_JS: &str = include_str!("../../web/media.js");

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { static_file("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { static_file("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/signaling.js",
            get(|| async { static_file("text/javascript; charset=utf-8", SIGNALING_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { static_file("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/layout.js",
            get(|| async { static_file("text/javascript; charset=utf-8", LAYOUT_JS) }),
        )
        .route(
            "/chat.js",
            get(|| async { static_file("text/javascript; charset=utf-8", CHAT_JS) }),
        )
        .route(
            "/media.js",
            get(|| async { static_file("text/javascript; charset=utf-8", MEDIA_JS) }),
        )
        // No icon: answer quietly instead of a 404 in every browser console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/rooms", get(rooms))
        .with_state(state)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ws(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
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
        .on_upgrade(move |socket| crate::signal::session::run(socket, state))
}

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
    mut shutdown: watch::Receiver<bool>,
) -> Result<(std::net::SocketAddr, JoinHandle<Result<(), Error>>), Error> {
    let addr = state.config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener.local_addr()?;
    let app = router(state.clone());
    let task = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = tls::acceptor(cert, key)?;
            tokio::spawn(tls::serve(listener, acceptor, app, shutdown))
        }
        _ => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await
                .map_err(Error::Io)
        }),
    };
    Ok((local, task))
}
