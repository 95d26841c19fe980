//! The HTTP side: `/ws` (upgraded to a connection), `/healthz`, `/readyz`,
//! `/metrics`, and the demo page; plus the shutdown sequence.
//!
//! HTTP/1.1 is served by hyper directly rather than `axum::serve`, because
//! `axum::serve` sets no timer: a client that opened a TCP connection and
//! trickled its request headers a byte at a time (slowloris) held the socket
//! and its task forever. Here every connection must deliver a complete request
//! within `timeouts.handshake_ms` of the accept (hyper's header read timeout),
//! and headers are capped at [`MAX_HEADER_BYTES`].
//!
//! Graceful shutdown waits for in-flight plain HTTP requests only: upgraded
//! WebSocket tasks are not hyper's any more, so connections hold a
//! [`TaskTracker`] token and the drain waits on the tracker itself, bounded by
//! `timeouts.drain_timeout_ms`.
//!
//! [`TaskTracker`]: tokio_util::task::TaskTracker

use crate::auth::token_from_request;
use crate::conn::{self, Upgrade, handshake::origin_allowed};
use crate::edge::Edge;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The demo page served at `/` when `demo_page` is on.
const DEMO_PAGE: &str = include_str!("demo.html");

/// The browser client (`clients/js`, built by `tsc`), served at `/herald.js` beside
/// the demo page. `scripts/test-js.sh` checks that it matches its sources.
const CLIENT_JS: &str = include_str!("herald.js");

/// Largest request head (request line and headers) accepted; bigger ones get
/// 431. Tokens are at most 8 KiB; this leaves room for cookies.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Capacity of each connection's WebSocket read buffer. tungstenite's default
/// is 128 KiB, allocated and zero-filled at the first read: 128 KiB resident
/// for every connection, idle or not (and a 128 KiB memset per read). Clients
/// send small frames (requests, pongs) at a limited rate; a bigger frame still
/// arrives whole (the buffer grows to fit it), in reads of this size. Measured
/// in docs/PERFORMANCE-NOTES.md.
pub const READ_BUFFER_BYTES: usize = 1024;

/// How much tungstenite gathers before it writes to the socket. Its default,
/// 128 KiB, let the writer's batch of queued frames (a resume's catch-up)
/// pile up to that size per connection, and the buffer keeps its capacity
/// afterwards: a 10,000-client reconnect storm peaked at 1.3 GiB. 16 KiB still
/// writes a batch of small frames in one system call.
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Accepts TCP connections and serves HTTP/1.1 with upgrades on each until
/// `shutdown`, then waits (up to `drain`) for in-flight plain requests.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
    handshake: Duration,
    drain: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let http_conns = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(handshake)
        .max_header_size(MAX_HEADER_BYTES);
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades();
        let shutdown = shutdown.clone();
        http_conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    http_conns.close();
    if tokio::time::timeout(drain, http_conns.wait())
        .await
        .is_err()
    {
        tracing::debug!("plain HTTP requests still running after the drain timeout");
    }
}

/// Builds the HTTP routes.
pub fn routes(edge: Arc<Edge>) -> axum::Router {
    let mut r = axum::Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if edge.cfg.demo_page {
        r = r.route("/", get(|| async { Html(DEMO_PAGE) })).route(
            "/herald.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    CLIENT_JS,
                )
            }),
        );
    }
    r.with_state(edge)
}

async fn ws(
    State(edge): State<Arc<Edge>>,
    upgrade: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if edge.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: connect to another edge\n",
        )
            .into_response();
    }
    let up = Upgrade {
        origin_ok: origin_allowed(&headers, &edge.cfg.allowed_origins),
        token: token_from_request(&headers, &uri, &edge.cfg.auth.cookie_name),
    };
    let max = edge.cfg.limits.max_frame_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| conn::run(edge, socket, up))
}

async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    if edge.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if edge.client.connection_state() != async_nats::connection::State::Connected {
        return (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected\n").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), edge.refresh_epoch()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "JetStream did not answer in time\n",
        )
            .into_response(),
    }
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        edge.metrics.render(&edge.id),
    )
        .into_response()
}

/// Serves until `edge.shutdown` is cancelled, then drains: no new connections,
/// every client gets `disconnect` 1012, writers flush, NATS is drained.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener) -> std::io::Result<()> {
    serve_with(edge, listener, axum::Router::new()).await
}

/// [`serve`] with more routes beside the edge's own (`herald dev` adds its
/// development token endpoint this way).
pub async fn serve_with(
    edge: Arc<Edge>,
    listener: TcpListener,
    extra: axum::Router,
) -> std::io::Result<()> {
    let ctl = tokio::spawn(crate::control::run(edge.clone()));
    let epoch_watch = tokio::spawn(watch_reconnects(edge.clone()));
    let jwks = edge
        .verifier
        .uses_jwks()
        .then(|| tokio::spawn(refresh_jwks(edge.clone())));
    let presence_stop = CancellationToken::new();
    let presence = tokio::spawn(
        edge.presence
            .clone()
            .run(presence_stop.clone(), edge.signals.clone()),
    );
    let app = routes(edge.clone()).merge(extra);
    accept_loop(
        listener,
        app,
        edge.shutdown.clone(),
        edge.cfg.handshake_timeout(),
        edge.cfg.drain_timeout(),
    )
    .await;
    tracing::info!(
        connections = edge.registry.all().len(),
        "draining connections"
    );
    edge.tracker.close();
    if tokio::time::timeout(edge.cfg.drain_timeout(), edge.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing remaining connections");
    }
    // Every connection has left its rooms: remove this edge's presence.
    presence_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(6), presence)
        .await
        .is_err()
    {
        tracing::warn!("presence cleanup timed out");
    }
    ctl.abort();
    epoch_watch.abort();
    if let Some(j) = jwks {
        j.abort();
    }
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), edge.client.drain()).await {
        tracing::warn!(error = %e, "NATS drain timed out");
    }
    tracing::info!("stopped");
    Ok(())
}

/// After every NATS reconnect, re-reads the stream's epoch.
async fn watch_reconnects(edge: Arc<Edge>) {
    let mut rx = edge.signals.subscribe();
    loop {
        match rx.recv().await {
            Ok(crate::nats::NatsSignal::Reconnected) => {
                if let Err(e) = edge.refresh_epoch().await {
                    tracing::warn!(error = %e, "could not re-read the stream after reconnecting");
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
}

/// Fetches the JWKS document at start and every `auth.jwks_refresh_secs`.
async fn refresh_jwks(edge: Arc<Edge>) {
    let every = Duration::from_secs(edge.cfg.auth.jwks_refresh_secs.max(1));
    loop {
        match edge.verifier.refresh_jwks(true).await {
            Ok(n) => tracing::info!(keys = n, "JWKS loaded"),
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys"),
        }
        tokio::time::sleep(every).await;
    }
}
