//! Accepting and serving HTTP connections, plain or TLS, with the bounds a public server
//! needs: a deadline for the request header and the TLS handshake, writes that must make
//! progress, a small kernel send buffer, and an accept loop that backs off when the process
//! is out of descriptors instead of spinning.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_http::add_extension::AddExtension;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::AppState;

/// How long in-flight HTTP requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` turns true, each served on its own task.
pub async fn accept_loop<A, F>(
    mut accept: A,
    state: Arc<AppState>,
    app: Router,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) where
    A: FnMut() -> F,
    F: Future<Output = io::Result<(TcpStream, SocketAddr)>>,
{
    let mut backoff = Backoff::default();
    loop {
        let Some((stream, peer)) =
            next_connection(&mut accept, &mut backoff, &state.metrics, &mut shutdown).await
        else {
            return;
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            state.clone(),
            app.clone(),
            tls.clone(),
            shutdown.clone(),
        ));
    }
}

/// The next accepted connection, backing off while accepting fails; `None` at shutdown.
async fn next_connection<A, F>(
    accept: &mut A,
    backoff: &mut Backoff,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)>
where
    A: FnMut() -> F,
    F: Future<Output = io::Result<(TcpStream, SocketAddr)>>,
{
    loop {
        let accepted = tokio::select! {
            accepted = accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return None,
        };
        let e = match accepted {
            Ok(pair) => {
                backoff.reset();
                return Some(pair);
            }
            Err(e) => e,
        };
        Metrics::add(&metrics.accept_errors, 1);
        // A connection that died in the backlog says nothing about the listener.
        if is_connection_error(&e) {
            continue;
        }
        let delay = backoff.next_delay();
        // Once per episode, not once per failed accept: EMFILE repeats.
        if backoff.first() {
            warn!(error = %e, "accept failed; backing off until it succeeds");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Exponential back-off from 5 ms to 1 s between failed accepts.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        (Self::FIRST * (1u32 << shift)).min(Self::MAX)
    }

    /// True right after the first failure of an episode.
    pub fn first(&self) -> bool {
        self.failures == 1
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    if state.config.tcp_send_buffer > 0 {
        // Autotuning grows a send buffer to megabytes for a client that does not read.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(state.config.tcp_send_buffer);
    }
    let io = TimedIo::new(stream, state.config.write_timeout, state.metrics.clone());
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(state.config.tls_handshake_timeout, acceptor.accept(io))
                .await
            {
                Ok(Ok(tls)) => serve_http(TokioIo::new(tls), peer, state, app, shutdown).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    Metrics::add(&state.metrics.tls_handshake_timeouts, 1);
                    debug!(%peer, "TLS handshake timed out");
                }
            }
        }
        None => serve_http(TokioIo::new(io), peer, state, app, shutdown).await,
    }
}

/// HTTP/1.1 only: browsers open WebSockets over it, and it has the header deadline that
/// HTTP/2 lacks.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    state: Arc<AppState>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(AddExtension::new(app, ConnectInfo(peer)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let stopping = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            Metrics::add(&state.metrics.header_timeouts, 1);
            debug!(%peer, "no request header in time; closed");
        } else {
            debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
}

/// A TCP stream whose writes fail once they make no progress for `write_timeout`: a client
/// that stops reading fills its buffers and is then dropped, whatever sits above the stream
/// (an HTTP response, a WebSocket, TLS).
pub struct TimedIo {
    inner: TcpStream,
    write_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
    metrics: Arc<Metrics>,
}

impl TimedIo {
    pub fn new(inner: TcpStream, write_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        TimedIo {
            inner,
            write_timeout,
            stalled: None,
            timed_out: false,
            metrics,
        }
    }

    /// Called when the inner write is pending: fails once the stall outlasts the timeout.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.write_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if !self.timed_out {
                    self.timed_out = true;
                    Metrics::add(&self.metrics.write_timeouts, 1);
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write made no progress: the client stopped reading",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.poll_stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors, the loop sleeps between tries (5 ms doubling to 1 s) instead of
    /// spinning, and serves again once accepting works.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut ready = Some(listener.accept().await.unwrap());
        let calls = std::cell::Cell::new(0u32);
        let mut accept = || {
            calls.set(calls.get() + 1);
            let result = if calls.get() <= 20 {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            } else {
                ready.take().ok_or_else(|| io::Error::other("done"))
            };
            std::future::ready(result)
        };
        let metrics = Metrics::default();
        let (_tx, mut shutdown) = watch::channel(false);
        let start = tokio::time::Instant::now();
        let got = next_connection(
            &mut accept,
            &mut Backoff::default(),
            &metrics,
            &mut shutdown,
        )
        .await;
        assert!(got.is_some());
        assert_eq!(calls.get(), 21, "one accept per back-off step");
        assert_eq!(metrics.snapshot().accept_errors, 20);
        // 5+10+...+640 ms, then 1 s each: about 13.3 s of sleeping for 20 failures.
        let slept = start.elapsed();
        assert!(slept >= Duration::from_secs(13), "{slept:?}");
        drop(client);
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert_eq!(delays[9], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(5));
        assert!(b.first());
    }
}
