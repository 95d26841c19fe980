//! `herald serve`: run an edge until SIGTERM, then drain.

use anyhow::{Context as _, Result};
use herald_edge::{Config, Edge};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Loads config and serves.
pub async fn run(file: Option<&Path>) -> Result<()> {
    let cfg = super::load_config(file)?;
    crate::logging::init(&cfg.log);
    super::warn_unknown_env();
    cfg.validate()?;
    serve(cfg, super::shutdown_on_signals(), |_| {}).await
}

/// Starts the edge and serves until `shutdown`; `on_listen` sees the bound address.
pub async fn serve(
    cfg: Config,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    serve_with(cfg, shutdown, axum::Router::new(), on_listen).await
}

/// [`serve`] with `extra` routes beside the edge's own.
pub async fn serve_with(
    cfg: Config,
    shutdown: CancellationToken,
    extra: axum::Router,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listen = cfg.listen.clone();
    let edge = Edge::start(cfg, shutdown).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen} (set HERALD_LISTEN to another address)"))?;
    let addr = listener.local_addr()?;
    tracing::info!(edge = %edge.id, %addr, epoch = %edge.epoch(), "herald edge listening");
    on_listen(addr);
    herald_edge::server::serve_with(edge, listener, extra).await?;
    Ok(())
}
