//! The edge's shared state, passed explicitly to every handler and task.

use crate::auth::Verifier;
use crate::config::Config;
use crate::conn::handle::ConnId;
use crate::metrics::Metrics;
use crate::nats::{self, NatsSignal};
use crate::registry::Registry;
use crate::router::Router;
use crate::stream::{self, StreamReader};
use async_nats::Client;
use herald_protocol::Subjects;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A key could not be loaded.
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    /// NATS is unreachable.
    #[error(transparent)]
    Nats(#[from] nats::ConnectError),
    /// The stream or bucket is missing or wrong.
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
}

/// Everything a connection or task of this edge needs.
pub struct Edge {
    /// Validated configuration.
    pub cfg: Config,
    /// This edge's name.
    pub id: String,
    /// Subject builder.
    pub subjects: Subjects,
    /// The NATS connection.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Token verification.
    pub verifier: Verifier,
    /// Rooms and fan-out.
    pub router: Arc<Router>,
    /// Connections by user.
    pub registry: Registry,
    /// Presence: this edge's writes and the cluster's reads.
    pub presence: Arc<crate::presence::Tracker>,
    /// Stored-event reads.
    pub reader: StreamReader,
    /// Resume reads, shared between identical concurrent requests.
    pub reads: stream::SharedReads,
    /// Cancelled on SIGTERM/Ctrl-C: stop accepting, drain.
    pub shutdown: CancellationToken,
    /// Tracks connection and room tasks for the drain.
    pub tracker: TaskTracker,
    /// NATS connection signals.
    pub signals: broadcast::Sender<NatsSignal>,
    epoch: Arc<RwLock<String>>,
    conn_seq: AtomicU64,
    conn_salt: u32,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn default_edge_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge".into());
    format!("{host}-{:04x}", rand::random::<u16>())
}

/// Checks the stream at start-up, waiting out a JetStream that is briefly
/// unavailable (a leader election after a node restart) for up to 30 s. A
/// missing or misconfigured stream fails at once: waiting will not fix it.
async fn check_with_retry(client: &Client, cfg: &Config) -> Result<String, stream::StreamError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match stream::check(client, cfg).await {
            Ok(epoch) => return Ok(epoch),
            Err(e @ (stream::StreamError::Api { .. } | stream::StreamError::Timeout(_)))
                if std::time::Instant::now() + delay < deadline =>
            {
                tracing::warn!(error = %e, "JetStream is not answering yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(3));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Edge {
    /// Connects to NATS, checks (or creates) the stream, and builds the edge.
    pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Arc<Self>, StartError> {
        cfg.validate()?;
        let verifier = Verifier::from_config(&cfg.auth)?;
        let id = cfg.edge_id.clone().unwrap_or_else(default_edge_id);
        let metrics = Arc::new(Metrics::default());
        let (client, signals) =
            nats::connect(&cfg.nats, &format!("herald-edge {id}"), metrics.clone()).await?;
        metrics.nats_connected.store(1, Relaxed);
        if cfg.setup_on_start {
            stream::setup(&client, &cfg).await?;
        }
        let epoch = Arc::new(RwLock::new(check_with_retry(&client, &cfg).await?));
        let subjects = cfg.subjects();
        let reader = StreamReader::new(
            client.clone(),
            &cfg.stream.name,
            cfg.catchup.batch,
            cfg.catchup_timeout(),
        );
        let tracker = TaskTracker::new();
        let router = Router::new(
            client.clone(),
            subjects.clone(),
            reader.clone(),
            metrics.clone(),
            crate::router::RouterSettings {
                epoch: epoch.clone(),
                pending_cap: cfg.limits.outbound_queue,
                check_every: (cfg.catchup.check_interval_secs > 0)
                    .then(|| std::time::Duration::from_secs(cfg.catchup.check_interval_secs)),
                fill_chunk: cfg.catchup.max_events,
            },
            tracker.clone(),
            signals.clone(),
        );
        let reads = stream::SharedReads::new(reader.clone(), metrics.clone());
        let conn_salt: u32 = rand::random();
        let presence = crate::presence::Tracker::new(
            cfg.presence.clone(),
            &id,
            &format!("{id}-{conn_salt:08x}"),
            client.clone(),
            subjects.clone(),
            metrics.clone(),
        );
        let edge = Arc::new(Self {
            presence,
            reads,
            id,
            subjects,
            client,
            metrics,
            verifier,
            router,
            registry: Registry::default(),
            reader,
            shutdown,
            tracker,
            signals,
            epoch,
            conn_seq: AtomicU64::new(0),
            conn_salt,
            cfg,
        });
        Ok(edge)
    }

    /// The stream's current epoch.
    pub fn epoch(&self) -> String {
        self.epoch.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// Re-reads the epoch (after a NATS reconnect the stream may have been
    /// recreated).
    pub async fn refresh_epoch(&self) -> Result<(), stream::StreamError> {
        let e = stream::check(&self.client, &self.cfg).await?;
        let changed = match self.epoch.write() {
            Ok(mut w) if *w != e => {
                tracing::warn!(old = %*w, new = %e, "stream epoch changed: the stream was recreated");
                *w = e;
                true
            }
            _ => false,
        };
        if changed {
            self.router.reset_sequences();
        }
        Ok(())
    }

    /// A new connection id: unique per edge process, not guessable across edges.
    pub fn new_conn_id(&self) -> ConnId {
        let n = self.conn_seq.fetch_add(1, Relaxed);
        format!("{}-{:08x}-{n}", self.id, self.conn_salt).into()
    }
}
