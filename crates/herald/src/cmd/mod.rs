//! One module per subcommand, plus what they share.

pub mod demo_chat;
pub mod dev;
pub mod presence;
pub mod publish;
pub mod serve;
pub mod setup;
pub mod token;

use anyhow::{Context as _, Result};
use herald_edge::Config;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Loads configuration with a message naming the file.
pub fn load_config(file: Option<&Path>) -> Result<Config> {
    Config::load(file).with_context(|| match file {
        Some(f) => format!(
            "loading configuration from {} and HERALD_* variables",
            f.display()
        ),
        None => "loading configuration from HERALD_* variables".into(),
    })
}

/// Warns about `HERALD_…` variables that set nothing (call after logging is up).
pub fn warn_unknown_env() {
    for k in Config::unknown_env_vars(std::env::vars()) {
        tracing::warn!(variable = %k, "ignoring an environment variable that names no Herald setting (see docs/CONFIG.md)");
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// Connects to NATS for a one-shot command.
pub async fn nats_client(cfg: &Config) -> Result<async_nats::Client> {
    let metrics = std::sync::Arc::new(herald_edge::metrics::Metrics::default());
    let (client, _) = herald_edge::nats::connect(&cfg.nats, "herald-cli", metrics).await?;
    Ok(client)
}
