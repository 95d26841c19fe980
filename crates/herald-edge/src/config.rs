//! The edge's configuration: one struct with a default and a doc comment per
//! field, loaded from an optional TOML file and `HERALD_…` environment variables
//! (`__` separates nesting levels), and validated before anything binds.
//!
//! Every field is documented for users in `docs/CONFIG.md`; keep the two in step.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Why the configuration could not be used. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("could not load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// The file names a setting Herald does not have (most likely a typo).
    #[error("unknown setting `{key}` in {file}{hint}")]
    UnknownKey {
        /// The dotted key.
        key: String,
        /// The file.
        file: String,
        /// A suggestion, if a known key is close.
        hint: String,
    },
    /// A value is present but unusable.
    #[error("invalid configuration `{key}` (env {env}): {message}")]
    Invalid {
        /// The dotted key, e.g. `auth.hs256_secret`.
        key: &'static str,
        /// The environment variable that sets it.
        env: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(key: &'static str, env: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        env,
        message: message.into(),
    }
}

/// The whole configuration of an edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// This edge's name in `welcome` frames, logs and metrics; default: host name
    /// plus a random suffix.
    pub edge_id: Option<String>,
    /// The `P` in every NATS subject.
    pub subject_prefix: String,
    /// Origins allowed to open a WebSocket (exact `scheme://host[:port]`, or `*`).
    /// Requests without an `Origin` header (non-browser clients) are always allowed;
    /// with an empty list, only same-origin browser requests are.
    pub allowed_origins: Vec<String>,
    /// Serve the demo page at `/` (on by default in `herald dev`).
    pub demo_page: bool,
    /// Create or update the stream and KV bucket at start-up instead of refusing to
    /// start when they are missing.
    pub setup_on_start: bool,
    /// NATS connection.
    pub nats: NatsConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// The join authorizer (`P.authz.join`).
    pub authz: AuthzConfig,
    /// Client `emit` requests (`P.rpc.<event>`).
    pub rpc: RpcConfig,
    /// Per-connection and per-user limits.
    pub limits: LimitsConfig,
    /// Keepalive and timeouts.
    pub timeouts: TimeoutsConfig,
    /// The JetStream stream holding durable events.
    pub stream: StreamConfig,
    /// The presence KV bucket.
    pub presence: PresenceConfig,
    /// Resume and history reads.
    pub catchup: CatchupConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            edge_id: None,
            subject_prefix: herald_protocol::subject::DEFAULT_PREFIX.into(),
            allowed_origins: Vec::new(),
            demo_page: false,
            setup_on_start: false,
            nats: NatsConfig::default(),
            auth: AuthConfig::default(),
            authz: AuthzConfig::default(),
            rpc: RpcConfig::default(),
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            stream: StreamConfig::default(),
            presence: PresenceConfig::default(),
            catchup: CatchupConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// NATS connection settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://host:4222,nats://host2:4222`.
    pub url: String,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// Path to a `.creds` file (JWT + NKey).
    pub creds_file: Option<String>,
    /// How long to wait for the first connection at start-up.
    pub connect_timeout_ms: u64,
    /// Connect only to the configured URLs, not to the cluster members NATS
    /// announces (for networks where announced addresses are unreachable).
    pub ignore_discovered_servers: bool,
    /// Capacity of each subscription's buffer in the NATS client; messages beyond it
    /// are dropped by the client (and counted as a slow-consumer event).
    pub subscription_capacity: usize,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("creds_file", &self.creds_file)
            .finish_non_exhaustive()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            connect_timeout_ms: 5_000,
            ignore_discovered_servers: false,
            subscription_capacity: 65_536,
        }
    }
}

/// Token verification settings. At least one key source is required.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Shared secret for HS256, HS384 and HS512 tokens.
    pub hs256_secret: Option<String>,
    /// PEM public key (inline, or a path to a file) for RS256 tokens.
    pub rs256_public_key: Option<String>,
    /// PEM public key (inline, or a path to a file) for ES256 tokens.
    pub es256_public_key: Option<String>,
    /// URL of a JWKS document (RS256/ES256 keys chosen by `kid`).
    pub jwks_url: Option<String>,
    /// How often the JWKS document is fetched again; an unknown `kid` also
    /// triggers a fetch (at most once per `jwks_min_refresh_secs`).
    pub jwks_refresh_secs: u64,
    /// Minimum time between two JWKS fetches.
    pub jwks_min_refresh_secs: u64,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Name of the cookie that may carry the token.
    pub cookie_name: String,
    /// How long a connection without a token in the request may take to send its
    /// `auth` frame.
    pub auth_timeout_ms: u64,
    /// Ask `P.authn.connect` to authenticate each connection instead of verifying a
    /// JWT locally.
    pub connect_hook: bool,
    /// How long the connect hook may take before the connection is refused with 1013.
    pub connect_hook_timeout_ms: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs: only whether they are set.
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("rs256_public_key", &self.rs256_public_key.is_some())
            .field("es256_public_key", &self.es256_public_key.is_some())
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("cookie_name", &self.cookie_name)
            .field("connect_hook", &self.connect_hook)
            .finish_non_exhaustive()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            rs256_public_key: None,
            es256_public_key: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_secs: 10,
            issuer: None,
            audience: None,
            leeway_secs: 5,
            cookie_name: "auth_token".into(),
            auth_timeout_ms: 5_000,
            connect_hook: false,
            connect_hook_timeout_ms: 2_000,
        }
    }
}

/// Join authorizer settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthzConfig {
    /// Ask `P.authz.join` when the token's `rooms` claim does not allow a join.
    /// When off, such joins are refused with `forbidden`.
    pub enabled: bool,
    /// How long the authorizer may take; after that the join fails with
    /// `unavailable` (never a silent allow).
    pub timeout_ms: u64,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout_ms: 2_000,
        }
    }
}

/// `emit` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcConfig {
    /// How long a service may take to answer an `emit` before `timeout`.
    pub timeout_ms: u64,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self { timeout_ms: 5_000 }
    }
}

/// Limits that protect the edge and other clients from one connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest WebSocket message a client may send; bigger ones close with 1009.
    pub max_frame_bytes: usize,
    /// Largest `data` of an `emit` or `publish`; bigger ones get `too_large`.
    pub max_payload_bytes: usize,
    /// Rooms one connection may be in (its user room included).
    pub max_rooms_per_conn: usize,
    /// Connections one user may hold on one edge; more are closed with 4029.
    pub max_conns_per_user: usize,
    /// Sustained requests per second per connection (token bucket rate).
    pub requests_per_sec: u32,
    /// Requests a connection may burst above the rate.
    pub request_burst: u32,
    /// Rate-limited requests in a row after which the connection is closed with 4029.
    pub rate_limit_close_after: u32,
    /// `emit` requests one connection may have waiting for a service at once.
    pub max_inflight_requests: usize,
    /// Frames queued for one connection before it is a slow consumer (closed with
    /// 4008).
    pub outbound_queue: usize,
    /// Total connections this edge accepts; more are refused with 1013.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_payload_bytes: 32 * 1024,
            max_rooms_per_conn: 100,
            max_conns_per_user: 50,
            requests_per_sec: 50,
            request_burst: 100,
            rate_limit_close_after: 100,
            max_inflight_requests: 32,
            outbound_queue: 1024,
            max_connections: 100_000,
        }
    }
}

/// Keepalive and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutsConfig {
    /// Interval of WebSocket pings from the edge (told to clients as `ping_ms`).
    pub ping_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_ms: u64,
    /// On SIGTERM, how long connections get to flush before the edge exits.
    pub drain_timeout_ms: u64,
    /// How long the client may take to send a complete HTTP request (the
    /// WebSocket upgrade, or a plain `/healthz`/`/metrics` GET), counted from the
    /// TCP accept; also how long an idle keep-alive HTTP connection is kept.
    /// Connections that trickle their headers (slowloris) are closed after it.
    pub handshake_ms: u64,
    /// How long one frame may wait for room in a connection's queue when the edge
    /// answers a request (the fan-out never waits).
    pub reply_enqueue_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            ping_ms: 25_000,
            idle_timeout_ms: 60_000,
            drain_timeout_ms: 10_000,
            handshake_ms: 10_000,
            reply_enqueue_ms: 5_000,
        }
    }
}

/// The stream that stores durable events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamConfig {
    /// Stream name.
    pub name: String,
    /// How long events are kept, in seconds.
    pub max_age_secs: u64,
    /// How many events are kept per room.
    pub max_msgs_per_subject: i64,
    /// Total size limit in bytes (-1: none).
    pub max_bytes: i64,
    /// Replicas (3 in a production cluster).
    pub replicas: usize,
    /// JetStream de-duplication window for `Nats-Msg-Id`, in seconds.
    pub duplicate_window_secs: u64,
    /// `file` or `memory`.
    pub storage: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            name: "HERALD".into(),
            max_age_secs: 24 * 3600,
            max_msgs_per_subject: 1000,
            max_bytes: -1,
            replicas: 1,
            duplicate_window_secs: 120,
            storage: "file".into(),
        }
    }
}

/// Presence: the KV bucket and how edges keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// Track presence at all. Off: no KV writes, `presence` requests answer
    /// `unavailable`, no `presence_join`/`presence_leave`.
    pub enabled: bool,
    /// KV bucket name.
    pub bucket: String,
    /// Replicas.
    pub replicas: usize,
    /// Room kinds without presence (no writes, no announcements, `presence`
    /// requests answer `not_found`), e.g. `["program"]` for rooms where joins
    /// and leaves would only be noise.
    pub disabled_kinds: Vec<String>,
    /// Room kinds whose presence is kept and can be asked for, but whose joins
    /// and leaves are not pushed to members: for big rooms, where every join
    /// would otherwise be one frame to each of thousands of members.
    pub quiet_kinds: Vec<String>,
    /// How often this edge refreshes its heartbeat key (one KV write per edge).
    pub heartbeat_secs: u64,
    /// How long after its last heartbeat a silent edge's entries are removed
    /// and its users' leaves announced. At least twice `heartbeat_secs`.
    pub expiry_secs: u64,
    /// At most this many users are listed in a `presence` reply (the reply's
    /// `total` still counts all).
    pub query_max: usize,
    /// How often each edge also scans the bucket for entries of vanished edges
    /// (besides reacting to heartbeat expiries). 0 turns the periodic scan off.
    pub sweep_interval_secs: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bucket: "herald_presence".into(),
            replicas: 1,
            disabled_kinds: Vec::new(),
            quiet_kinds: Vec::new(),
            heartbeat_secs: 5,
            expiry_secs: 15,
            query_max: 1000,
            sweep_interval_secs: 300,
        }
    }
}

/// Reading missed events back from the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CatchupConfig {
    /// Messages asked for per batched Direct Get request.
    pub batch: usize,
    /// Most events a single resume delivers; a cursor further behind gets
    /// `recovered:false`.
    pub max_events: usize,
    /// How long one batch may take.
    pub timeout_ms: u64,
    /// How often each room compares its last delivered sequence with the
    /// stream's (0: never). RePublish is at-most-once, so a lost *last* event of
    /// a quiet room is otherwise only noticed when the next one arrives.
    pub check_interval_secs: u64,
    /// Most events one `history` request returns (a larger `limit` is capped).
    pub history_max: usize,
    /// Events returned by `history` when the request gives no `limit`.
    pub history_default: usize,
}

impl Default for CatchupConfig {
    fn default() -> Self {
        Self {
            batch: 256,
            max_events: 5_000,
            timeout_ms: 5_000,
            check_interval_secs: 30,
            history_max: 100,
            history_default: 50,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `herald_edge=debug,info`; `RUST_LOG`
    /// overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// Every settable key, dotted (`auth.hs256_secret`), from the defaults.
fn known_keys() -> Vec<String> {
    let v = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut out = Vec::new();
    leaf_keys(&v, "", &mut out);
    out
}

fn leaf_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_object() {
        Some(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() {
                    leaf_keys(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
        None => out.push(prefix.to_owned()),
    }
}

/// The known key with the most characters in common position-wise, if close.
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a String> {
    let score = |a: &str, b: &str| {
        let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        let suffix = a
            .chars()
            .rev()
            .zip(b.chars().rev())
            .take_while(|(x, y)| x == y)
            .count();
        common + suffix
    };
    known
        .iter()
        .map(|k| (score(key, k), k))
        .max_by_key(|(s, _)| *s)
        .filter(|(s, _)| *s * 2 >= key.len())
        .map(|(_, k)| k)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Config {
    /// Loads defaults, then the TOML file (if given), then `HERALD_…` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Config::load`], with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            let source = config::File::from(f).format(config::FileFormat::Toml);
            let only_file: serde_json::Value = config::Config::builder()
                .add_source(source.clone())
                .build()?
                .try_deserialize()?;
            let known = known_keys();
            let mut found = Vec::new();
            leaf_keys(&only_file, "", &mut found);
            if let Some(key) = found.into_iter().find(|k| !known.contains(k)) {
                let hint = closest(&key, &known)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(ConfigError::UnknownKey {
                    key,
                    file: f.display().to_string(),
                    hint,
                });
            }
            b = b.add_source(source);
        }
        let mut e = config::Environment::with_prefix("HERALD")
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("allowed_origins")
            .with_list_parse_key("presence.disabled_kinds")
            .with_list_parse_key("presence.quiet_kinds")
            .try_parsing(true);
        if let Some(env) = env {
            e = e.source(Some(env));
        }
        let cfg: Config = b.add_source(e).build()?.try_deserialize()?;
        Ok(cfg)
    }

    /// `HERALD_…` variables that name no setting (typos, or variables meant for
    /// something else, such as the ones Kubernetes derives from a Service named
    /// `herald`). The binary logs them as warnings.
    pub fn unknown_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        const NOT_SETTINGS: [&str; 4] = [
            "HERALD_CONFIG",
            "HERALD_BIN",
            "HERALD_NATS_SERVER_BIN",
            "HERALD_TEST_LOGS",
        ];
        let known = known_keys();
        vars.into_iter()
            .filter_map(|(k, _)| {
                let rest = k.strip_prefix("HERALD_")?;
                let key = rest.to_lowercase().replace("__", ".");
                (!NOT_SETTINGS.contains(&k.as_str()) && !known.contains(&key)).then_some(k)
            })
            .collect()
    }

    /// Checks every value; `dev` relaxes nothing but the need for a secret, which
    /// `herald dev` provides itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid("listen", "HERALD_LISTEN", format!("`{}`: {e}", self.listen)))?;
        herald_protocol::Subjects::new(&self.subject_prefix)
            .map_err(|e| invalid("subject_prefix", "HERALD_SUBJECT_PREFIX", e.to_string()))?;
        let a = &self.auth;
        let has_key = a.hs256_secret.is_some()
            || a.rs256_public_key.is_some()
            || a.es256_public_key.is_some()
            || a.jwks_url.is_some();
        if !has_key && !a.connect_hook {
            return Err(invalid(
                "auth.hs256_secret",
                "HERALD_AUTH__HS256_SECRET",
                "no token key is configured: set a shared secret (HERALD_AUTH__HS256_SECRET), \
                 a public key (HERALD_AUTH__RS256_PUBLIC_KEY / HERALD_AUTH__ES256_PUBLIC_KEY), \
                 a JWKS URL (HERALD_AUTH__JWKS_URL) or the connect hook (HERALD_AUTH__CONNECT_HOOK=true); \
                 `herald dev` makes a development secret for you",
            ));
        }
        if let Some(s) = &a.hs256_secret
            && s.len() < 16
        {
            return Err(invalid(
                "auth.hs256_secret",
                "HERALD_AUTH__HS256_SECRET",
                "the secret is shorter than 16 bytes; use at least 32 random bytes",
            ));
        }
        let p = &self.presence;
        if p.heartbeat_secs == 0 || p.expiry_secs < 2 * p.heartbeat_secs {
            return Err(invalid(
                "presence.expiry_secs",
                "HERALD_PRESENCE__EXPIRY_SECS",
                format!(
                    "must be at least twice presence.heartbeat_secs ({}), and the heartbeat at least 1 s",
                    p.heartbeat_secs
                ),
            ));
        }
        for (kinds, key, env) in [
            (
                &p.disabled_kinds,
                "presence.disabled_kinds",
                "HERALD_PRESENCE__DISABLED_KINDS",
            ),
            (
                &p.quiet_kinds,
                "presence.quiet_kinds",
                "HERALD_PRESENCE__QUIET_KINDS",
            ),
        ] {
            if let Some(k) = kinds
                .iter()
                .find(|k| herald_protocol::Room::from_parts(k, "x").is_err())
            {
                return Err(invalid(
                    key,
                    env,
                    format!("`{k}` is not a room kind ([a-z][a-z0-9_-]{{0,31}})"),
                ));
            }
        }
        if a.cookie_name.is_empty() {
            return Err(invalid(
                "auth.cookie_name",
                "HERALD_AUTH__COOKIE_NAME",
                "must not be empty",
            ));
        }
        for o in &self.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(invalid(
                    "allowed_origins",
                    "HERALD_ALLOWED_ORIGINS",
                    format!("`{o}` is not an origin like https://app.example.com (or `*`)"),
                ));
            }
        }
        let l = &self.limits;
        let positive = [
            (
                l.max_frame_bytes,
                "limits.max_frame_bytes",
                "HERALD_LIMITS__MAX_FRAME_BYTES",
            ),
            (
                l.max_payload_bytes,
                "limits.max_payload_bytes",
                "HERALD_LIMITS__MAX_PAYLOAD_BYTES",
            ),
            (
                l.max_rooms_per_conn,
                "limits.max_rooms_per_conn",
                "HERALD_LIMITS__MAX_ROOMS_PER_CONN",
            ),
            (
                l.max_conns_per_user,
                "limits.max_conns_per_user",
                "HERALD_LIMITS__MAX_CONNS_PER_USER",
            ),
            (
                l.requests_per_sec as usize,
                "limits.requests_per_sec",
                "HERALD_LIMITS__REQUESTS_PER_SEC",
            ),
            (
                l.request_burst as usize,
                "limits.request_burst",
                "HERALD_LIMITS__REQUEST_BURST",
            ),
            (
                l.max_inflight_requests,
                "limits.max_inflight_requests",
                "HERALD_LIMITS__MAX_INFLIGHT_REQUESTS",
            ),
            (
                l.outbound_queue,
                "limits.outbound_queue",
                "HERALD_LIMITS__OUTBOUND_QUEUE",
            ),
            (
                l.max_connections,
                "limits.max_connections",
                "HERALD_LIMITS__MAX_CONNECTIONS",
            ),
            (self.catchup.batch, "catchup.batch", "HERALD_CATCHUP__BATCH"),
            (
                self.stream.replicas,
                "stream.replicas",
                "HERALD_STREAM__REPLICAS",
            ),
        ];
        for (v, key, env) in positive {
            if v == 0 {
                return Err(invalid(key, env, "must be greater than 0"));
            }
        }
        if self.timeouts.ping_ms < 1000 {
            return Err(invalid(
                "timeouts.ping_ms",
                "HERALD_TIMEOUTS__PING_MS",
                "must be at least 1000",
            ));
        }
        if self.timeouts.idle_timeout_ms <= self.timeouts.ping_ms {
            return Err(invalid(
                "timeouts.idle_timeout_ms",
                "HERALD_TIMEOUTS__IDLE_TIMEOUT_MS",
                "must be longer than timeouts.ping_ms, or healthy idle clients get closed",
            ));
        }
        if self.timeouts.handshake_ms == 0 {
            return Err(invalid(
                "timeouts.handshake_ms",
                "HERALD_TIMEOUTS__HANDSHAKE_MS",
                "must be greater than 0: without it a client that never finishes its request holds a socket forever",
            ));
        }
        if !matches!(self.stream.storage.as_str(), "file" | "memory") {
            return Err(invalid(
                "stream.storage",
                "HERALD_STREAM__STORAGE",
                "must be `file` or `memory`",
            ));
        }
        if self.stream.max_msgs_per_subject == 0 || self.stream.max_age_secs == 0 {
            return Err(invalid(
                "stream.max_age_secs",
                "HERALD_STREAM__MAX_AGE_SECS",
                "retention (max_age_secs, max_msgs_per_subject) must be greater than 0",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                "HERALD_LOG__FORMAT",
                "must be `text` or `json`",
            ));
        }
        Ok(())
    }

    /// The subject builder for this prefix (validated in [`Config::validate`]).
    pub fn subjects(&self) -> herald_protocol::Subjects {
        herald_protocol::Subjects::new(&self.subject_prefix).unwrap_or_default()
    }

    /// Ping interval.
    pub fn ping(&self) -> Duration {
        ms(self.timeouts.ping_ms)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        ms(self.timeouts.idle_timeout_ms)
    }
    /// HTTP request (handshake) timeout.
    pub fn handshake_timeout(&self) -> Duration {
        ms(self.timeouts.handshake_ms)
    }
    /// Drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        ms(self.timeouts.drain_timeout_ms)
    }
    /// Reply enqueue timeout.
    pub fn reply_enqueue(&self) -> Duration {
        ms(self.timeouts.reply_enqueue_ms)
    }
    /// Authorizer timeout.
    pub fn authz_timeout(&self) -> Duration {
        ms(self.authz.timeout_ms)
    }
    /// `emit` timeout.
    pub fn rpc_timeout(&self) -> Duration {
        ms(self.rpc.timeout_ms)
    }
    /// Auth frame timeout.
    pub fn auth_timeout(&self) -> Duration {
        ms(self.auth.auth_timeout_ms)
    }
    /// Connect hook timeout.
    pub fn connect_hook_timeout(&self) -> Duration {
        ms(self.auth.connect_hook_timeout_ms)
    }
    /// One catch-up batch timeout.
    pub fn catchup_timeout(&self) -> Duration {
        ms(self.catchup.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_with_nesting_and_lists() {
        let c = Config::load_with_env(
            None,
            Some(env(&[
                ("HERALD_LISTEN", "127.0.0.1:9000"),
                ("HERALD_NATS__URL", "nats://n:4222"),
                ("HERALD_SUBJECT_PREFIX", "acme"),
                ("HERALD_AUTH__HS256_SECRET", "0123456789abcdef0123"),
                (
                    "HERALD_ALLOWED_ORIGINS",
                    "https://a.example,https://b.example",
                ),
                ("HERALD_LIMITS__MAX_ROOMS_PER_CONN", "7"),
            ])),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.nats.url, "nats://n:4222");
        assert_eq!(c.subject_prefix, "acme");
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.limits.max_rooms_per_conn, 7);
        c.validate().unwrap();
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:1\"\n[auth]\nhs256_secret = \"from-file-0123456789\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&p), Some(env(&[("HERALD_LISTEN", "127.0.0.1:2")])))
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.auth.hs256_secret.as_deref(), Some("from-file-0123456789"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors_and_in_the_environment_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.toml");
        std::fs::write(&p, "[limits]\nmax_room_per_conn = 3\n").unwrap();
        let e = Config::load_with_env(Some(&p), Some(env(&[])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.max_room_per_conn") && e.contains("limits.max_rooms_per_conn"),
            "{e}"
        );
        let unknown = Config::unknown_env_vars(env(&[
            ("HERALD_LISTEN", "x"),
            ("HERALD_AUTH__HS256_SECRET", "x"),
            ("HERALD_AUTH__HS256SECRET", "x"),
            ("HERALD_CONFIG", "x"),
            ("OTHER", "x"),
        ]));
        assert_eq!(unknown, ["HERALD_AUTH__HS256SECRET"]);
    }

    #[test]
    fn missing_secret_is_an_error_naming_the_key() {
        let c = Config::load_with_env(None, Some(env(&[]))).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("auth.hs256_secret") && e.contains("HERALD_AUTH__HS256_SECRET"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.auth.hs256_secret = Some("0123456789abcdef".into());
        c.validate().unwrap();
        c.listen = "nope".into();
        assert!(c.validate().unwrap_err().to_string().contains("`listen`"));
        c.listen = "127.0.0.1:0".into();
        c.subject_prefix = "a.*".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("subject_prefix")
        );
        c.subject_prefix = "herald".into();
        c.limits.outbound_queue = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.outbound_queue")
        );
        c.limits.outbound_queue = 1;
        c.allowed_origins = vec!["example.com".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("allowed_origins")
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let mut c = Config::default();
        c.auth.hs256_secret = Some("super-secret-value-123".into());
        assert!(!format!("{c:?}").contains("super-secret"));
    }
}
