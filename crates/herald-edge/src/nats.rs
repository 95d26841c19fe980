//! The edge's NATS connection: connecting with the configured credentials and
//! turning the client's connection events into metrics and a readiness signal.

use crate::config::NatsConfig;
use crate::metrics::Metrics;
use async_nats::{Client, ConnectOptions, Event};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::broadcast;

/// Why NATS could not be reached at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("reading NATS credentials file `{path}`: {source}")]
    Creds {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No server answered.
    #[error(
        "cannot connect to NATS at {url}: {source}. Is nats-server running there with JetStream (-js)? \
         `herald dev` starts one for you; set HERALD_NATS__URL to point elsewhere"
    )]
    Unreachable {
        /// The URL(s).
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
}

/// What the connection reports to the rest of the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsSignal {
    /// (Re)connected: subscriptions are restored by the client, but anything
    /// published meanwhile was missed and must be read from the stream.
    Reconnected,
    /// The client dropped messages for a slow subscription.
    SlowConsumer,
}

/// Connects to NATS. The returned receiver yields [`NatsSignal`]s.
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    metrics: Arc<Metrics>,
) -> Result<(Client, broadcast::Sender<NatsSignal>), ConnectError> {
    let (tx, _) = broadcast::channel(64);
    let signals = tx.clone();
    let mut opts = ConnectOptions::new()
        .name(name)
        .subscription_capacity(cfg.subscription_capacity)
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .max_reconnects(None)
        .event_callback(move |ev| {
            let metrics = metrics.clone();
            let tx = tx.clone();
            async move {
                match ev {
                    Event::Connected => {
                        metrics.nats_connected.store(1, Relaxed);
                        tracing::info!("NATS connected");
                        let _ = tx.send(NatsSignal::Reconnected);
                    }
                    Event::Disconnected => {
                        metrics.nats_connected.store(0, Relaxed);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    Event::SlowConsumer(sid) => {
                        metrics.nats_slow_consumer.fetch_add(1, Relaxed);
                        tracing::warn!(sid, "NATS client dropped messages for a slow subscription");
                        let _ = tx.send(NatsSignal::SlowConsumer);
                    }
                    Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
    if cfg.ignore_discovered_servers {
        opts = opts.ignore_discovered_servers();
    }
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Creds {
                path: path.clone(),
                source,
            })?;
    }
    let urls: Vec<&str> = cfg
        .url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let client =
        opts.connect(urls.as_slice())
            .await
            .map_err(|source| ConnectError::Unreachable {
                url: cfg.url.clone(),
                source,
            })?;
    Ok((client, signals))
}
