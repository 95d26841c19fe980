//! The JetStream side: creating the stream and bucket (`herald setup`), checking
//! them at start-up, the stream's epoch, and reading stored events back with
//! Direct Get for resumes.
//!
//! Reads go through the Direct Get API by hand: batched requests
//! (`{"seq","next_by_subj","batch"}`, server 2.11+) return up to a batch of a
//! room's events per round trip, ending with a status-204 end-of-batch message,
//! without creating any consumer state on the server. The few reads that decide
//! whether events were lost (a room's last sequence, whether a cursor's event is
//! still stored) go to the stream leader instead, since a Direct Get may be
//! answered by a replica that is behind.

use crate::config::{Config, StreamConfig};
use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use herald_protocol::{Subjects, headers};
use std::time::Duration;

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream does not exist.
    #[error(
        "JetStream stream `{0}` does not exist: run `herald setup` against this NATS (or start the edge with HERALD_SETUP_ON_START=true)"
    )]
    Missing(String),
    /// The stream exists but is not set up the way Herald needs.
    #[error(
        "JetStream stream `{name}` is not configured for Herald ({what}): run `herald setup` to update it"
    )]
    Misconfigured {
        /// Stream name.
        name: String,
        /// What differs.
        what: String,
    },
    /// The KV bucket does not exist.
    #[error("KV bucket `{0}` does not exist: run `herald setup`")]
    MissingBucket(String),
    /// A JetStream API call failed.
    #[error("JetStream {op}: {message}")]
    Api {
        /// What was attempted.
        op: &'static str,
        /// The server's or client's message.
        message: String,
    },
    /// NATS did not answer in time.
    #[error("JetStream {0} timed out")]
    Timeout(&'static str),
}

fn api(op: &'static str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Api {
        op,
        message: e.to_string(),
    }
}

/// One message as the stream leader returned it (`$JS.API.STREAM.MSG.GET`).
/// Headers and payload stay base64 until asked for: most reads need only the
/// sequence.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LeaderMsg {
    /// The message's subject.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

impl LeaderMsg {
    /// The headers in NATS wire form (`NATS/1.0` then `Name: value` lines);
    /// empty when there are none or they do not decode.
    pub fn headers(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.hdrs
            .as_deref()
            .and_then(|h| b64.decode(h).ok())
            .unwrap_or_default()
    }

    /// The payload; empty when there is none or it does not decode.
    pub fn data(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.data
            .as_deref()
            .and_then(|d| b64.decode(d).ok())
            .unwrap_or_default()
    }
}

/// Why [`leader_msg_get`] failed.
#[derive(Debug)]
pub(crate) enum LeaderGetError {
    /// No answer within the timeout.
    Timeout,
    /// The request or the server failed (the message says how).
    Failed(String),
}

/// Reads one message through the stream leader: `api_subject` is
/// `$JS.API.STREAM.MSG.GET.<stream>` and `body` the request (`{"seq":N}`,
/// `{"last_by_subj":"…"}`). `None` when no such message is stored. Unlike a
/// Direct Get, the answer is never from a replica that is behind, which is what
/// the edge's "was anything lost?" reads and presence's compare-and-set need.
pub(crate) async fn leader_msg_get(
    client: &Client,
    api_subject: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Option<LeaderMsg>, LeaderGetError> {
    #[derive(serde::Deserialize)]
    struct Reply {
        message: Option<LeaderMsg>,
        error: Option<serde_json::Value>,
    }
    let req = client.request(api_subject.to_owned(), body.to_string().into());
    let msg = tokio::time::timeout(timeout, req)
        .await
        .map_err(|_| LeaderGetError::Timeout)?
        .map_err(|e| LeaderGetError::Failed(e.to_string()))?;
    let r: Reply = serde_json::from_slice(&msg.payload)
        .map_err(|e| LeaderGetError::Failed(format!("bad reply: {e}")))?;
    if let Some(err) = r.error {
        // 10037: no message found.
        if err["err_code"] == 10037 || err["code"] == 404 {
            return Ok(None);
        }
        return Err(LeaderGetError::Failed(err.to_string()));
    }
    Ok(r.message)
}

/// The stream configuration Herald wants, from config.
pub fn stream_config(cfg: &StreamConfig, subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: cfg.name.clone(),
        description: Some("Herald durable room events".into()),
        subjects: vec![subjects.room_wildcard()],
        republish: Some(stream::Republish {
            source: subjects.room_wildcard(),
            destination: subjects.live_wildcard(),
            headers_only: false,
        }),
        max_age: Duration::from_secs(cfg.max_age_secs),
        max_messages_per_subject: cfg.max_msgs_per_subject,
        max_bytes: cfg.max_bytes,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        storage: if cfg.storage == "memory" {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    }
}

/// The presence bucket configuration.
pub fn bucket_config(cfg: &Config) -> kv::Config {
    kv::Config {
        bucket: cfg.presence.bucket.clone(),
        description: "Herald presence".into(),
        history: 1,
        num_replicas: cfg.presence.replicas,
        storage: jetstream::stream::StorageType::File,
        // Per-key TTLs and expiry markers (server 2.11+): an entry whose heartbeat
        // stops vanishes and watchers are told.
        limit_markers: Some(Duration::from_secs(1)),
        ..Default::default()
    }
}

/// What `herald setup` did.
#[derive(Debug)]
pub struct SetupReport {
    /// Stream name and whether it was new.
    pub stream: (String, bool),
    /// Bucket name and whether it was new.
    pub bucket: (String, bool),
}

/// Creates or updates the stream and the presence bucket. Idempotent.
pub async fn setup(client: &Client, cfg: &Config) -> Result<SetupReport, StreamError> {
    let js = jetstream::new(client.clone());
    let subjects = cfg.subjects();
    let want = stream_config(&cfg.stream, &subjects);
    let existed = js.get_stream(&cfg.stream.name).await.is_ok();
    js.create_or_update_stream(want)
        .await
        .map_err(|e| api("creating or updating the stream", e))?;
    let bucket_existed = js.get_key_value(&cfg.presence.bucket).await.is_ok();
    if !bucket_existed {
        js.create_key_value(bucket_config(cfg))
            .await
            .map_err(|e| api("creating the presence bucket", e))?;
    }
    Ok(SetupReport {
        stream: (cfg.stream.name.clone(), !existed),
        bucket: (cfg.presence.bucket.clone(), !bucket_existed),
    })
}

/// Checks that the stream exists and republishes where edges listen; returns
/// its epoch.
pub async fn check(client: &Client, cfg: &Config) -> Result<String, StreamError> {
    let js = jetstream::new(client.clone());
    let subjects = cfg.subjects();
    let mut s = match js.get_stream(&cfg.stream.name).await {
        Ok(s) => s,
        Err(e) if e.to_string().contains("not found") => {
            return Err(StreamError::Missing(cfg.stream.name.clone()));
        }
        Err(e) => return Err(api("looking up the stream", e)),
    };
    let info = s.info().await.map_err(|e| api("reading stream info", e))?;
    let c = &info.config;
    let want_dest = subjects.live_wildcard();
    match &c.republish {
        Some(r) if r.destination == want_dest && !r.headers_only => {}
        _ => {
            return Err(StreamError::Misconfigured {
                name: c.name.clone(),
                what: format!(
                    "it must republish {} to {want_dest}",
                    subjects.room_wildcard()
                ),
            });
        }
    }
    if !c.allow_direct {
        return Err(StreamError::Misconfigured {
            name: c.name.clone(),
            what: "direct gets must be allowed".into(),
        });
    }
    if let Err(e) = js.get_key_value(&cfg.presence.bucket).await {
        // Only "not found" means missing; a timeout (say, during a leader
        // election) is an API error the caller may retry.
        return Err(if e.to_string().to_lowercase().contains("not found") {
            StreamError::MissingBucket(cfg.presence.bucket.clone())
        } else {
            api("looking up the presence bucket", e)
        });
    }
    Ok(epoch_of(info))
}

/// The stream's epoch: its creation time in nanoseconds, in hex. It is the same
/// for every edge and across restarts, and changes when the stream is deleted
/// and created again (when every stored sequence becomes meaningless).
pub fn epoch_of(info: &stream::Info) -> String {
    format!("{:x}", info.created.unix_timestamp_nanos())
}

/// One stored event read back from the stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Stream sequence.
    pub seq: u64,
    /// Event name (`Herald-Event`); `None` if the producer left it out.
    pub event: Option<String>,
    /// Payload bytes.
    pub payload: Bytes,
    /// Producer headers relevant to delivery.
    pub headers: Option<HeaderMap>,
    /// The encoded frame, made once however many resumes share this event.
    encoded: std::sync::OnceLock<Option<axum::extract::ws::Utf8Bytes>>,
}

impl StoredEvent {
    /// The `event` frame for this stored event in `room`; `None` when the
    /// producer left out a valid `Herald-Event` header (such events are never
    /// delivered, live or replayed).
    pub fn frame(&self, room: &herald_protocol::Room) -> Option<String> {
        let name = self
            .event
            .as_deref()
            .filter(|n| headers::valid_event_name(n))?;
        Some(herald_protocol::frame::event_frame(
            room.as_str(),
            name,
            Some(self.seq),
            &self.payload,
        ))
    }

    /// Like [`StoredEvent::frame`], encoded on first use and shared after:
    /// in a reconnect storm thousands of clients resume from one shared read,
    /// and each gets the same bytes instead of its own copy. `room` must be
    /// the event's own room (as for every read of one room's subject).
    pub fn shared_frame(
        &self,
        room: &herald_protocol::Room,
    ) -> Option<axum::extract::ws::Utf8Bytes> {
        self.encoded
            .get_or_init(|| self.frame(room).map(Into::into))
            .clone()
    }
}

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

/// Reads a stream's stored events with Direct Get.
#[derive(Debug, Clone)]
pub struct StreamReader {
    client: Client,
    api_subject: String,
    msg_get_subject: String,
    batch: usize,
    timeout: Duration,
}

impl StreamReader {
    /// A reader for the named stream.
    pub fn new(client: Client, stream: &str, batch: usize, timeout: Duration) -> Self {
        Self {
            client,
            api_subject: format!("$JS.API.DIRECT.GET.{stream}"),
            msg_get_subject: format!("$JS.API.STREAM.MSG.GET.{stream}"),
            batch,
            timeout,
        }
    }

    /// Asks the stream *leader* for one message (`$JS.API.STREAM.MSG.GET`):
    /// slower than Direct Get but never answered by a lagging replica, so the
    /// answers that decide "was anything lost?" are consistent.
    async fn leader_get(
        &self,
        body: serde_json::Value,
    ) -> Result<Option<(String, u64)>, StreamError> {
        match leader_msg_get(&self.client, &self.msg_get_subject, &body, self.timeout).await {
            Ok(m) => Ok(m.map(|m| (m.subject, m.seq))),
            Err(LeaderGetError::Timeout) => Err(StreamError::Timeout("message get")),
            Err(LeaderGetError::Failed(e)) => Err(api("message get", e)),
        }
    }

    /// The last sequence stored on `subject` (0 if none), by Direct Get.
    ///
    /// Any replica may answer, so in a cluster the answer may be behind the
    /// leader by what that replica has not applied yet, never ahead. That is
    /// safe where a low answer only means more events are delivered: a room
    /// starting on this edge subscribes first, then reads this, and the next
    /// event's `Nats-Last-Sequence` reveals anything between the two, which the
    /// gap fill delivers. It keeps every first join of a room (each user's
    /// own room, at every connect) off the leader's API, which answers one
    /// request at a time and timed out under a connect storm. If the Direct
    /// Get fails (its responders can lag a stream's creation or a restart),
    /// the leader answers.
    pub async fn last_seq_direct(&self, subject: &str) -> Result<u64, StreamError> {
        match self.direct_last_seq(subject).await {
            Ok(seq) => Ok(seq),
            Err(e) => {
                tracing::debug!(subject, error = %e, "direct get of a room's last event failed; asking the leader");
                self.last_seq(subject).await
            }
        }
    }

    /// One Direct Get of the last message on `subject`.
    async fn direct_last_seq(&self, subject: &str) -> Result<u64, StreamError> {
        let body = serde_json::json!({ "last_by_subj": subject });
        let req = self
            .client
            .request(self.api_subject.clone(), body.to_string().into());
        let msg = tokio::time::timeout(self.timeout, req)
            .await
            .map_err(|_| StreamError::Timeout("direct get of a room's last event"))?
            .map_err(|e| api("direct get of a room's last event", e))?;
        match msg.status {
            Some(async_nats::StatusCode::NOT_FOUND) => Ok(0),
            Some(s) if s != async_nats::StatusCode::OK => Err(api(
                "direct get of a room's last event",
                format!("status {s}: {:?}", msg.description),
            )),
            _ => header_u64(msg.headers.as_ref(), headers::NATS_SEQUENCE).ok_or_else(|| {
                api(
                    "direct get of a room's last event",
                    "the answer has no Nats-Sequence header",
                )
            }),
        }
    }

    /// The last sequence stored on `subject` (0 if none), from the leader.
    pub async fn last_seq(&self, subject: &str) -> Result<u64, StreamError> {
        Ok(self
            .leader_get(serde_json::json!({ "last_by_subj": subject }))
            .await?
            .map_or(0, |(_, seq)| seq))
    }

    /// Whether the message at `seq` is still stored and belongs to `subject`.
    pub async fn holds(&self, seq: u64, subject: &str) -> Result<bool, StreamError> {
        Ok(self
            .leader_get(serde_json::json!({ "seq": seq }))
            .await?
            .is_some_and(|(s, _)| s == subject))
    }

    /// Whether nothing stored on `subject` after `seq` can have been trimmed:
    /// the event at `seq` is still stored (events of one subject are removed
    /// oldest first), or, for `seq` 0, the stream never dropped its head.
    pub async fn anchored(&self, subject: &str, seq: u64) -> Result<bool, StreamError> {
        if seq > 0 {
            self.holds(seq, subject).await
        } else {
            self.holds_any(1).await
        }
    }

    /// Whether any message is stored at exactly `seq`.
    pub async fn holds_any(&self, seq: u64) -> Result<bool, StreamError> {
        Ok(self
            .leader_get(serde_json::json!({ "seq": seq }))
            .await?
            .is_some())
    }

    /// Reads the events stored on `subject` with `after < seq <= upto`, oldest
    /// first, at most `max` of them (`Err` only on NATS failures; a range longer
    /// than `max` returns the first `max` and `true` for "truncated").
    pub async fn range(
        &self,
        subject: &str,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Result<(Vec<StoredEvent>, bool), StreamError> {
        let mut out = Vec::new();
        let mut truncated = false;
        self.for_each(subject, after, upto, |e| {
            if out.len() == max {
                truncated = true;
                return false;
            }
            out.push(e);
            true
        })
        .await?;
        Ok((out, truncated))
    }

    /// The last `n` events stored on `subject`, oldest first. Reads the room's
    /// stored events forward (bounded by the stream's per-room limit) and keeps
    /// only the last `n` in memory.
    pub async fn last_n(&self, subject: &str, n: usize) -> Result<Vec<StoredEvent>, StreamError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let upto = self.last_seq(subject).await?;
        let mut ring = std::collections::VecDeque::with_capacity(n);
        self.for_each(subject, 0, upto, |e| {
            if ring.len() == n {
                ring.pop_front();
            }
            ring.push_back(e);
            true
        })
        .await?;
        Ok(ring.into())
    }

    /// Calls `f` with each event stored on `subject` with `after < seq <= upto`,
    /// oldest first, in batches; stops early when `f` returns `false`.
    async fn for_each(
        &self,
        subject: &str,
        after: u64,
        upto: u64,
        mut f: impl FnMut(StoredEvent) -> bool,
    ) -> Result<(), StreamError> {
        let mut next = after + 1;
        while next <= upto {
            let body = serde_json::json!({
                "seq": next,
                "next_by_subj": subject,
                "batch": self.batch,
            });
            let mut last_in_batch = None;
            let mut stopped = false;
            let pending = herald_publish::direct::batch(
                &self.client,
                &self.api_subject,
                &body,
                self.timeout,
                |msg| {
                    let h = msg.headers.as_ref();
                    let Some(seq) = header_u64(h, headers::NATS_SEQUENCE) else {
                        return true;
                    };
                    last_in_batch = Some(seq);
                    if seq > upto {
                        return true;
                    }
                    let event = StoredEvent {
                        seq,
                        event: h
                            .and_then(|h| h.get(headers::EVENT))
                            .map(|v| v.as_str().to_owned()),
                        payload: msg.payload,
                        headers: msg.headers,
                        encoded: Default::default(),
                    };
                    stopped = !f(event);
                    !stopped
                },
            )
            .await
            .map_err(|e| match e {
                herald_publish::direct::BatchError::Timeout => {
                    StreamError::Timeout("batched direct get")
                }
                e => api("batched direct get", e),
            })?;
            if stopped {
                return Ok(());
            }
            match (last_in_batch, pending) {
                (Some(last), Some(p)) if p > 0 && last < upto => next = last + 1,
                _ => break,
            }
        }
        Ok(())
    }
}

/// The result of a shared range read.
pub type SharedRange = Result<RangeEvents, String>;

/// A read in flight, shared by everyone who asks for it before it completes.
type SharedRead<T> =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<T, String>>>;

/// The events of one shared range read, and whether it was truncated.
type RangeEvents = std::sync::Arc<(Vec<StoredEvent>, bool)>;

/// Identical reads in flight at once, each made once: the first caller's
/// future is shared (behind `Shared`) with every caller that asks for the
/// same key before it completes.
#[derive(Debug)]
struct SingleFlight<K, T: Clone> {
    inflight: std::sync::Mutex<std::collections::HashMap<K, SharedRead<T>>>,
}

impl<K: std::hash::Hash + Eq + Clone, T: Clone> SingleFlight<K, T> {
    fn new() -> Self {
        Self {
            inflight: Default::default(),
        }
    }

    /// Joins the read of `key` in flight, or starts it with `start`.
    async fn run(
        &self,
        key: K,
        start: impl FnOnce() -> futures::future::BoxFuture<'static, Result<T, String>>,
    ) -> Result<T, String> {
        use futures::FutureExt as _;
        let fut = {
            let Ok(mut map) = self.inflight.lock() else {
                return Err("shared reads lock poisoned".into());
            };
            map.entry(key.clone())
                .or_insert_with(|| start().shared())
                .clone()
        };
        let out = fut.await;
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&key);
        }
        out
    }
}

/// Resume reads, shared between concurrent identical requests.
///
/// After an edge restart, thousands of clients reconnect to the survivors at
/// once and resume the same rooms from the same cursors. Each distinct
/// `(room, after, upto)` range is read from the stream once while it is in
/// flight, and so is each "is the cursor's event still stored?" check (a
/// read from the stream leader, whose API serves one request at a time);
/// every joiner waiting for it gets the same answer (events behind an `Arc`,
/// not copied). Memory is bounded by `catchup.max_events` per distinct read.
#[derive(Debug, Clone)]
pub struct SharedReads {
    reader: StreamReader,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    ranges: std::sync::Arc<SingleFlight<(String, u64, u64, usize), RangeEvents>>,
    anchors: std::sync::Arc<SingleFlight<(String, u64), bool>>,
}

impl SharedReads {
    /// Shares reads made through `reader`.
    pub fn new(reader: StreamReader, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Self {
            reader,
            metrics,
            ranges: std::sync::Arc::new(SingleFlight::new()),
            anchors: std::sync::Arc::new(SingleFlight::new()),
        }
    }

    /// Like [`StreamReader::range`], joined with an identical read in flight.
    pub async fn range(&self, subject: &str, after: u64, upto: u64, max: usize) -> SharedRange {
        use futures::FutureExt as _;
        let key = (subject.to_owned(), after, upto, max);
        let start = || {
            self.metrics
                .catchup_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reader = self.reader.clone();
            let subject = subject.to_owned();
            async move {
                reader
                    .range(&subject, after, upto, max)
                    .await
                    .map(std::sync::Arc::new)
                    .map_err(|e| e.to_string())
            }
            .boxed()
        };
        self.ranges.run(key, start).await
    }

    /// Like [`StreamReader::anchored`], joined with an identical check in flight.
    pub async fn anchored(&self, subject: &str, seq: u64) -> Result<bool, String> {
        use futures::FutureExt as _;
        let start = || {
            let reader = self.reader.clone();
            let subject = subject.to_owned();
            async move {
                reader
                    .anchored(&subject, seq)
                    .await
                    .map_err(|e| e.to_string())
            }
            .boxed()
        };
        self.anchors.run((subject.to_owned(), seq), start).await
    }
}
