//! Presence: this edge's share of the cluster-wide "who is online" state in the
//! KV bucket (layout in [`herald_protocol::presence`]).
//!
//! Connections entering and leaving rooms only touch an in-memory count per
//! (room, user) and mark the pair dirty; a sync task writes dirty pairs to KV
//! with compare-and-set, setting this edge instance's count in the pair's
//! value. So writes happen only when a count changes (joins and leaves), and a
//! burst of changes to one pair collapses into one write. The writer whose
//! write creates a key announces `presence_join`; the one whose write removes
//! it announces `presence_leave` — once per transition, across edges.
//!
//! Liveness costs one write per edge per `heartbeat_secs`: the `e.<instance>`
//! key, written with a TTL of `expiry_secs`. When it expires (kill -9, a
//! partition) the server writes an expiry marker; every edge watching sees it
//! and sweeps: entries naming an instance whose heartbeat is gone (checked with
//! the stream leader, never a lagging replica) lose that instance, and leaves
//! are announced for users left with no connection. An edge that finds its own
//! heartbeat gone (NATS was away longer than the expiry) writes all its
//! entries again.

use crate::config::PresenceConfig;
use crate::metrics::Metrics;
use crate::nats::NatsSignal;
use crate::stream::{LeaderGetError, leader_msg_get};
use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;
use herald_protocol::presence::{self, Entry, Member};
use herald_protocol::subject::LifecycleEvent;
use herald_protocol::{Room, Subjects, UserId, headers};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// How long the tombstone of a removed entry is kept before the bucket forgets
/// the key altogether.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Compare-and-set attempts per write before giving up until the next round.
const CAS_ATTEMPTS: u32 = 12;
/// Pairs written concurrently.
const SYNC_CONCURRENCY: usize = 32;
/// Time allowed, at shutdown, to remove this edge's entries.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

type Pair = (Room, UserId);

#[derive(Debug)]
struct Local {
    conns: u32,
    info: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
struct State {
    local: HashMap<Pair, Local>,
    dirty: HashSet<Pair>,
    /// What this edge last wrote for each pair it is in: `(revision, value)`.
    /// The next write tries that revision without reading first; a failed
    /// compare-and-set means someone else wrote, and only then is the key read.
    known: HashMap<Pair, (u64, Entry)>,
}

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Someone else wrote the key first: read again and retry.
    #[error("the key changed concurrently")]
    Conflict,
    /// NATS or JetStream failed.
    #[error("{0}")]
    Nats(String),
}

/// This edge's presence writer and the cluster's presence reader.
pub struct Tracker {
    cfg: PresenceConfig,
    instance: String,
    edge: String,
    client: Client,
    js: jetstream::Context,
    reader: herald_publish::Presence,
    subjects: Subjects,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    wake: Notify,
    sweep_now: Notify,
    beat_now: Notify,
    heartbeat_rev: AtomicU64,
    msg_get: String,
    direct_get: String,
    prefix: String,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Tracker {
    /// A tracker for this edge process. `instance` must be unique per process
    /// (a restarted edge is a new instance, so its predecessor's entries are
    /// swept rather than mistaken for its own).
    pub fn new(
        cfg: PresenceConfig,
        edge: &str,
        instance: &str,
        client: Client,
        subjects: Subjects,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            instance: presence::token(instance),
            edge: edge.to_owned(),
            js: jetstream::new(client.clone()),
            reader: herald_publish::Presence::new(client.clone(), cfg.bucket.clone()),
            msg_get: format!("$JS.API.STREAM.MSG.GET.KV_{}", cfg.bucket),
            direct_get: format!("$JS.API.DIRECT.GET.KV_{}", cfg.bucket),
            prefix: format!("$KV.{}.", cfg.bucket),
            client,
            subjects,
            metrics,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            sweep_now: Notify::new(),
            beat_now: Notify::new(),
            heartbeat_rev: AtomicU64::new(0),
            cfg,
        })
    }

    /// This edge instance's name in the bucket.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether presence is kept for rooms like `room`.
    pub fn tracks(&self, room: &Room) -> bool {
        self.cfg.enabled && !self.cfg.disabled_kinds.iter().any(|k| k == room.kind())
    }

    /// Whether presence is on at all.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// A connection of `user` entered `room`.
    pub fn enter(&self, room: &Room, user: &UserId, info: Option<&serde_json::Value>) {
        if !self.tracks(room) {
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            let pair = (room.clone(), user.clone());
            let l = s.local.entry(pair.clone()).or_insert(Local {
                conns: 0,
                info: None,
            });
            l.conns += 1;
            if info.is_some() {
                l.info = info.cloned();
            }
            s.dirty.insert(pair);
        }
        self.wake.notify_one();
    }

    /// A connection of `user` left `room` (or closed).
    pub fn exit(&self, room: &Room, user: &UserId) {
        if !self.tracks(room) {
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            let pair = (room.clone(), user.clone());
            if let Some(l) = s.local.get_mut(&pair) {
                l.conns = l.conns.saturating_sub(1);
                if l.conns == 0 {
                    s.local.remove(&pair);
                }
                s.dirty.insert(pair);
            }
        }
        self.wake.notify_one();
    }

    /// Who is in `room`, across the cluster, and how many in all.
    pub async fn members(
        &self,
        room: &Room,
        max: usize,
    ) -> Result<(Vec<Member>, usize), herald_publish::Error> {
        let mut all = self.reader.members(room).await?;
        let total = all.len();
        all.truncate(max);
        Ok((all, total))
    }

    /// Runs the heartbeat, the sync, the expiry watch and the sweeps until
    /// `stop`; then removes this edge's entries (its connections have closed
    /// by then) and its heartbeat.
    pub async fn run(
        self: Arc<Self>,
        stop: CancellationToken,
        signals: broadcast::Sender<NatsSignal>,
    ) {
        if !self.cfg.enabled {
            return;
        }
        // The heartbeat key goes first: a sweeper that sees one of our entries
        // then also sees our heartbeat.
        let mut delay = Duration::from_millis(200);
        loop {
            match self.beat().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, bucket = %self.cfg.bucket, "could not write the presence heartbeat; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(instance = %self.instance, "presence heartbeat registered");
        self.sweep_now.notify_one();
        let sync_stop = CancellationToken::new();
        let tasks = [
            tokio::spawn(self.clone().heartbeat_loop(stop.clone(), signals)),
            tokio::spawn(self.clone().watch_loop(stop.clone())),
            tokio::spawn(self.clone().sweep_loop(stop.clone())),
        ];
        let sync = tokio::spawn(self.clone().sync_loop(sync_stop.clone()));
        stop.cancelled().await;
        for t in tasks {
            t.abort();
        }
        // Connections are gone: what is dirty now is their leaves.
        sync_stop.cancel();
        let _ = sync.await;
        let flush = async {
            while self.flush_once().await > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Err(e) = self
                .purge(&presence::edge_key(&self.instance), None, TOMBSTONE_TTL)
                .await
            {
                tracing::warn!(error = %e, "could not remove the presence heartbeat");
            }
        };
        if tokio::time::timeout(FINAL_FLUSH, flush).await.is_err() {
            tracing::warn!(
                "presence entries not all removed at shutdown; other edges will sweep them after presence.expiry_secs"
            );
        }
    }

    async fn sync_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let failed = self.flush_once().await;
            if failed > 0 {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            backoff = Duration::from_millis(250);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Writes every dirty pair once; returns how many failed (they stay dirty).
    async fn flush_once(&self) -> usize {
        let batch: Vec<Pair> = match self.state.lock() {
            Ok(mut s) => s.dirty.drain().collect(),
            Err(_) => return 0,
        };
        if batch.is_empty() {
            return 0;
        }
        let failed: Vec<(Pair, KvError)> = futures::stream::iter(batch)
            .map(|p| async move {
                let r = self.sync_pair(&p).await;
                (p, r)
            })
            .buffer_unordered(SYNC_CONCURRENCY)
            .filter_map(|(p, r)| async move { r.err().map(|e| (p, e)) })
            .collect()
            .await;
        if let Some((_, e)) = failed.first() {
            self.metrics
                .presence_errors
                .fetch_add(failed.len() as u64, Relaxed);
            tracing::warn!(pairs = failed.len(), error = %e, "presence writes failed; retrying");
        }
        let n = failed.len();
        if let Ok(mut s) = self.state.lock() {
            s.dirty.extend(failed.into_iter().map(|(p, _)| p));
        }
        n
    }

    /// Makes the KV entry of one pair carry this instance's current count.
    async fn sync_pair(&self, pair: &Pair) -> Result<(), KvError> {
        let key = presence::key(&pair.0, &pair.1);
        for attempt in 0..CAS_ATTEMPTS {
            let (want, info, known) = match self.state.lock() {
                Ok(s) => {
                    let (want, info) = s
                        .local
                        .get(pair)
                        .map_or((0, None), |l| (l.conns, l.info.clone()));
                    (want, info, s.known.get(pair).cloned())
                }
                Err(_) => return Ok(()),
            };
            // First attempt: what we wrote last, or, for a pair new to this
            // edge, "absent". A failed compare-and-set costs one read: from any
            // replica first, then from the stream leader.
            let (rev, old) = match (attempt, known) {
                (0, Some((rev, e))) => (rev, Some(e)),
                (0, None) if want > 0 => (0, None),
                (0 | 1, _) => self.read_entry(&key, false).await?,
                _ => self.read_entry(&key, true).await?,
            };
            let mut new = old.clone().unwrap_or_default();
            if want > 0 {
                new.edges.insert(self.instance.clone(), want);
                if info.is_some() {
                    new.info = info;
                }
            } else {
                new.edges.remove(&self.instance);
            }
            let existed = old.as_ref().is_some_and(|e| !e.edges.is_empty());
            if old.as_ref() == Some(&new) || (!existed && new.edges.is_empty()) {
                return Ok(());
            }
            let written = if new.edges.is_empty() {
                self.purge(&key, Some(rev), TOMBSTONE_TTL).await
            } else {
                self.put(&key, new.encode().into(), Some(rev), None).await
            };
            match written {
                Ok(seq) => {
                    self.metrics.presence_writes.fetch_add(1, Relaxed);
                    if let Ok(mut s) = self.state.lock() {
                        if new.edges.is_empty() {
                            s.known.remove(pair);
                        } else {
                            s.known.insert(pair.clone(), (seq, new.clone()));
                        }
                    }
                    if !existed {
                        self.announce(&pair.0, &pair.1, true, new.info.as_ref())
                            .await;
                    } else if new.edges.is_empty() {
                        self.announce(&pair.0, &pair.1, false, None).await;
                    }
                    return Ok(());
                }
                Err(KvError::Conflict) => {
                    self.metrics.presence_conflicts.fetch_add(1, Relaxed);
                    let ms = 5u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_millis(rand::random_range(ms..2 * ms))).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(KvError::Nats(format!(
            "`{key}` kept changing under {CAS_ATTEMPTS} attempts"
        )))
    }

    /// Tells the room's members, on every edge, that `user` arrived or left.
    /// A user's own room is not announced (its only members are that user's
    /// connections); its transitions are the cluster-wide `user.online` and
    /// `user.offline` lifecycle events instead.
    async fn announce(
        &self,
        room: &Room,
        user: &UserId,
        join: bool,
        info: Option<&serde_json::Value>,
    ) {
        if room.user().as_ref() == Some(user) {
            self.metrics.presence_announcements.fetch_add(1, Relaxed);
            return self.lifecycle(user, join).await;
        }
        if self.cfg.quiet_kinds.iter().any(|k| k == room.kind()) {
            return;
        }
        self.metrics.presence_announcements.fetch_add(1, Relaxed);
        let mut h = HeaderMap::new();
        h.insert(presence::HEADER, if join { "join" } else { "leave" });
        h.insert(headers::USER, user.encoded().as_str());
        let body = info.map(|v| v.to_string()).unwrap_or_default();
        if let Err(e) = self
            .client
            .publish_with_headers(self.subjects.live(room), h, body.into())
            .await
        {
            tracing::warn!(room = %room, error = %e, "presence announcement not published");
        }
    }

    /// A user's first connection or last disconnect anywhere in the cluster,
    /// for services (`P.events.user.online` / `.offline`).
    async fn lifecycle(&self, user: &UserId, join: bool) {
        {
            let what = if join {
                LifecycleEvent::UserOnline
            } else {
                LifecycleEvent::UserOffline
            };
            let body = serde_json::json!({
                "user": user.as_str(),
                "edge": self.edge,
                "ts": now_ms(),
            });
            if let Err(e) = self
                .client
                .publish(self.subjects.lifecycle(what), body.to_string().into())
                .await
            {
                tracing::debug!(error = %e, "lifecycle event not published");
            }
        }
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        stop: CancellationToken,
        signals: broadcast::Sender<NatsSignal>,
    ) {
        let every = Duration::from_secs(self.cfg.heartbeat_secs);
        let mut rx = signals.subscribe();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
                sig = rx.recv() => {
                    // After a reconnect: check the heartbeat (and so whether
                    // our entries survived) and sweep what expired meanwhile.
                    if !matches!(sig, Ok(NatsSignal::Reconnected)) {
                        continue;
                    }
                    self.sweep_now.notify_one();
                }
            }
            if let Err(e) = self.beat().await {
                tracing::warn!(error = %e, "presence heartbeat failed");
            }
        }
    }

    /// Refreshes this instance's heartbeat key. If it is gone (it expired while
    /// NATS was away, and other edges may have swept our entries), writes it
    /// again and marks every local pair dirty, so the entries come back.
    async fn beat(&self) -> Result<(), KvError> {
        let key = presence::edge_key(&self.instance);
        let value = serde_json::json!({ "edge": self.edge, "ts": now_ms() }).to_string();
        let ttl = Duration::from_secs(self.cfg.expiry_secs);
        let rev = self.heartbeat_rev.load(Relaxed);
        let expect = (rev > 0).then_some(rev);
        let seq = match self
            .put(&key, value.clone().into(), expect, Some(ttl))
            .await
        {
            Ok(seq) => seq,
            Err(KvError::Conflict) => {
                tracing::warn!(
                    expiry_secs = self.cfg.expiry_secs,
                    "this edge's presence heartbeat expired (NATS was unreachable too long); writing its presence entries again"
                );
                let seq = self.put(&key, value.into(), None, Some(ttl)).await?;
                if let Ok(mut s) = self.state.lock() {
                    let all: Vec<Pair> = s.local.keys().cloned().collect();
                    s.dirty.extend(all);
                    s.known.clear();
                }
                self.wake.notify_one();
                seq
            }
            Err(e) => return Err(e),
        };
        self.heartbeat_rev.store(seq, Relaxed);
        self.metrics.presence_heartbeats.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Watches heartbeat keys: an expiry or removal triggers a sweep (or, for
    /// our own key, an immediate heartbeat).
    async fn watch_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let watched = async {
                let store = self
                    .js
                    .get_key_value(&self.cfg.bucket)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut w = store
                    .watch(presence::all_edges())
                    .await
                    .map_err(|e| e.to_string())?;
                while let Some(e) = w.next().await {
                    let e = e.map_err(|e| e.to_string())?;
                    if matches!(e.operation, kv::Operation::Delete | kv::Operation::Purge) {
                        if presence::instance_of(&e.key) == Some(self.instance.as_str()) {
                            self.beat_now.notify_one();
                        } else {
                            tracing::info!(key = %e.key, "an edge's presence heartbeat ended");
                            self.sweep_now.notify_one();
                        }
                    }
                }
                Ok::<_, String>(())
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = watched => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "watching presence heartbeats failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn sweep_loop(self: Arc<Self>, stop: CancellationToken) {
        let period = match self.cfg.sweep_interval_secs {
            0 => Duration::from_secs(100 * 365 * 24 * 3600),
            s => Duration::from_secs(s),
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.sweep_now.notified() => {}
                _ = tokio::time::sleep(period) => {}
            }
            // Several edges see the same expiry: spread them out a little (the
            // compare-and-set writes keep the outcome right either way).
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..500))).await;
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    entries = n,
                    "removed presence of edges that stopped heartbeating"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "presence sweep failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.sweep_now.notify_one();
                }
            }
        }
    }

    /// Removes every instance whose heartbeat is gone from every entry.
    /// Returns how many entries changed.
    pub async fn sweep(&self) -> Result<usize, KvError> {
        let nats = |e: herald_publish::Error| KvError::Nats(e.to_string());
        // Entries first, heartbeats second: an instance that wrote an entry we
        // see had written its heartbeat before it.
        let mut suspects: Vec<(String, Vec<String>)> = Vec::new();
        self.reader
            .scan(&presence::all_entries(), |e| {
                if let Some(v) = Entry::decode(&e.value) {
                    let others: Vec<String> = v
                        .edges
                        .keys()
                        .filter(|i| **i != self.instance)
                        .cloned()
                        .collect();
                    if !others.is_empty() {
                        suspects.push((e.key, others));
                    }
                }
                true
            })
            .await
            .map_err(nats)?;
        if suspects.is_empty() {
            return Ok(0);
        }
        let mut alive: HashSet<String> = HashSet::new();
        self.reader
            .scan(&presence::all_edges(), |e| {
                if let Some(i) = presence::instance_of(&e.key) {
                    alive.insert(i.to_owned());
                }
                true
            })
            .await
            .map_err(nats)?;
        let candidates: HashSet<&String> = suspects
            .iter()
            .flat_map(|(_, o)| o)
            .filter(|i| !alive.contains(*i))
            .collect();
        // A replica may not have a just-started edge's first heartbeat yet:
        // confirm each death with the stream leader.
        let mut dead: HashSet<String> = HashSet::new();
        for i in candidates {
            let (_, value) = self.read(&presence::edge_key(i)).await?;
            if value.is_none() {
                dead.insert(i.clone());
            }
        }
        if dead.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = suspects
            .into_iter()
            .filter(|(_, o)| o.iter().any(|i| dead.contains(i)))
            .map(|(k, _)| k)
            .collect();
        let dead = Arc::new(dead);
        let results: Vec<Result<bool, KvError>> = futures::stream::iter(keys)
            .map(|k| {
                let dead = dead.clone();
                async move { self.remove_instances(&k, &dead).await }
            })
            .buffer_unordered(SYNC_CONCURRENCY)
            .collect()
            .await;
        let mut changed = 0;
        for r in results {
            changed += usize::from(r?);
        }
        self.metrics
            .presence_swept
            .fetch_add(changed as u64, Relaxed);
        Ok(changed)
    }

    /// Removes `dead` instances from one entry; announces a leave if nobody is
    /// left. Returns whether the entry changed.
    async fn remove_instances(&self, key: &str, dead: &HashSet<String>) -> Result<bool, KvError> {
        let Some((room, user)) = presence::parse_key(key) else {
            return Ok(false);
        };
        for attempt in 0..CAS_ATTEMPTS {
            let (rev, old) = self.read_entry(key, attempt > 0).await?;
            let Some(old) = old else { return Ok(false) };
            let mut new = old.clone();
            new.edges.retain(|i, _| !dead.contains(i));
            if new == old {
                return Ok(false);
            }
            let written = if new.edges.is_empty() {
                self.purge(key, Some(rev), TOMBSTONE_TTL).await
            } else {
                self.put(key, new.encode().into(), Some(rev), None).await
            };
            match written {
                Ok(_) => {
                    self.metrics.presence_writes.fetch_add(1, Relaxed);
                    if new.edges.is_empty() {
                        self.announce(&room, &user, false, None).await;
                    }
                    return Ok(true);
                }
                Err(KvError::Conflict) => {
                    self.metrics.presence_conflicts.fetch_add(1, Relaxed);
                    let ms = 5u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_millis(rand::random_range(ms..2 * ms))).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(KvError::Nats(format!("`{key}` kept changing")))
    }

    /// Reads a key's last message from the stream leader: its revision (0 if
    /// the key never existed or was forgotten) and its value (`None` for a
    /// tombstone or an expiry marker).
    async fn read(&self, key: &str) -> Result<(u64, Option<Bytes>), KvError> {
        let body = serde_json::json!({ "last_by_subj": format!("{}{key}", self.prefix) });
        let m = match leader_msg_get(&self.client, &self.msg_get, &body, Duration::from_secs(5))
            .await
        {
            Ok(Some(m)) => m,
            Ok(None) => return Ok((0, None)),
            Err(LeaderGetError::Timeout) => {
                return Err(KvError::Nats(
                    "the presence bucket did not answer in time".into(),
                ));
            }
            Err(LeaderGetError::Failed(e)) => {
                return Err(KvError::Nats(format!("reading presence: {e}")));
            }
        };
        let hdrs = m.headers();
        let hdrs = String::from_utf8_lossy(&hdrs);
        if hdrs.contains("KV-Operation") || hdrs.contains("Nats-Marker-Reason") {
            return Ok((m.seq, None));
        }
        Ok((m.seq, Some(m.data().into())))
    }

    /// Reads an entry: from the stream leader (`leader`), or with Direct Get,
    /// which any replica answers without queuing behind JetStream API calls
    /// (possibly stale, which a compare-and-set then catches).
    async fn read_entry(&self, key: &str, leader: bool) -> Result<(u64, Option<Entry>), KvError> {
        let (rev, v) = if leader {
            self.read(key).await?
        } else {
            self.read_direct(key).await?
        };
        Ok((rev, v.and_then(|v| Entry::decode(&v))))
    }

    /// [`read`](Self::read) with Direct Get.
    async fn read_direct(&self, key: &str) -> Result<(u64, Option<Bytes>), KvError> {
        let subject = format!("{}.{}{key}", self.direct_get, self.prefix);
        let req = self.client.request(subject, Bytes::new());
        let msg = match tokio::time::timeout(Duration::from_secs(5), req).await {
            Err(_) => {
                return Err(KvError::Nats(
                    "the presence bucket did not answer in time".into(),
                ));
            }
            Ok(Err(e)) => return Err(KvError::Nats(format!("reading presence: {e}"))),
            Ok(Ok(m)) => m,
        };
        if msg.status == Some(async_nats::StatusCode::NOT_FOUND) {
            return Ok((0, None));
        }
        let h = msg.headers.as_ref();
        let Some(seq) = h
            .and_then(|h| h.get(headers::NATS_SEQUENCE))
            .and_then(|v| v.as_str().parse::<u64>().ok())
        else {
            return Err(KvError::Nats(format!(
                "reading presence: unexpected reply (status {:?})",
                msg.status
            )));
        };
        let tombstone = h.is_some_and(|h| {
            h.get("KV-Operation").is_some() || h.get("Nats-Marker-Reason").is_some()
        });
        Ok((seq, (!tombstone).then_some(msg.payload)))
    }

    /// Writes a value; `expect` is the key's revision it must still have
    /// (0: the key must hold nothing), `ttl` a per-key expiry.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expect: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<u64, KvError> {
        let mut h = HeaderMap::new();
        if let Some(rev) = expect {
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                rev.to_string().as_str(),
            );
        }
        if let Some(ttl) = ttl {
            h.insert("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
        }
        self.publish(key, h, value).await
    }

    /// Removes a key, leaving a tombstone that expires after `ttl`.
    async fn purge(&self, key: &str, expect: Option<u64>, ttl: Duration) -> Result<u64, KvError> {
        let mut h = HeaderMap::new();
        h.insert("KV-Operation", "PURGE");
        h.insert("Nats-Rollup", "sub");
        h.insert("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
        if let Some(rev) = expect {
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                rev.to_string().as_str(),
            );
        }
        self.publish(key, h, Bytes::new()).await
    }

    async fn publish(&self, key: &str, h: HeaderMap, value: Bytes) -> Result<u64, KvError> {
        let subject = format!("{}{key}", self.prefix);
        let ack = self
            .js
            .publish_with_headers(subject, h, value)
            .await
            .map_err(|e| KvError::Nats(format!("writing presence: {e}")))?;
        match ack.await {
            Ok(a) => Ok(a.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(KvError::Conflict),
            Err(e) => Err(KvError::Nats(format!("writing presence: {e}"))),
        }
    }
}
