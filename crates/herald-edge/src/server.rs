//! The HTTP side: `/ws` (upgraded to a connection), `/healthz`, `/readyz`,
//! `/metrics`, and the demo page; plus the shutdown sequence.
//!
//! `axum::serve(...).with_graceful_shutdown` does not wait for upgraded
//! WebSocket tasks, so connections hold a [`TaskTracker`] token and the drain
//! waits on the tracker itself, bounded by `timeouts.drain_timeout_ms`.
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
    let shutdown = edge.shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
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
