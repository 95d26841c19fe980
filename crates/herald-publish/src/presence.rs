//! Presence queries: who is online, per room and per user, read from the
//! presence KV bucket that the edges keep (layout: [`herald_protocol::presence`]).
//!
//! Reads use Direct Get, so any replica of the bucket answers and no
//! server-side consumer is created per query. A room's members are read in
//! batches of messages matching `p.<kind>.<id>.*` (the bucket keeps one value
//! per key, so that is exactly the current state); bulk status asks for the
//! last value of up to 1000 keys per request.
//!
//! ```no_run
//! # async fn demo() -> herald_publish::Result<()> {
//! use herald_publish::{Presence, Room, UserId};
//! let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
//! let presence = Presence::new(client, "herald_presence");
//! let six = UserId::new("6").unwrap();
//! if presence.is_online(&six).await? {
//!     let room = Room::parse("channel:42").unwrap();
//!     println!("{} online in {room}", presence.count(&room).await?);
//! }
//! # Ok(()) }
//! ```

use crate::error::{Error, ErrorKind, Result};
use async_nats::HeaderMap;
use herald_protocol::presence::{self, Entry, Member};
use herald_protocol::{Room, UserId};
use std::collections::HashMap;
use std::time::Duration;

/// How many keys one bulk request asks for (the server answers at most 1024).
const MULTI_LAST_MAX: usize = 1000;

/// One stored presence value, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// The key (`p.<kind>.<id>.<enc(user)>` or `e.<instance>`).
    pub key: String,
    /// Its revision (the stream sequence), for compare-and-set writes.
    pub revision: u64,
    /// The raw value.
    pub value: bytes::Bytes,
}

/// Reads the presence bucket.
#[derive(Debug, Clone)]
pub struct Presence {
    client: async_nats::Client,
    bucket: String,
    api: String,
    timeout: Duration,
    batch: usize,
}

fn read_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Read, format!("{what}: {e}"))
}

fn header<'a>(h: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    h?.get(name).map(|v| v.as_str())
}

/// Whether a stored message is a live value (not a delete, purge or expiry marker).
fn is_value(h: Option<&HeaderMap>) -> bool {
    header(h, "KV-Operation").is_none() && header(h, "Nats-Marker-Reason").is_none()
}

impl Presence {
    /// A reader for `bucket` (the edges' `presence.bucket`, default `herald_presence`).
    pub fn new(client: async_nats::Client, bucket: impl Into<String>) -> Self {
        let bucket = bucket.into();
        Self {
            api: format!("$JS.API.DIRECT.GET.KV_{bucket}"),
            client,
            bucket,
            timeout: Duration::from_secs(5),
            batch: 256,
        }
    }

    /// How long one read may take before it fails with [`ErrorKind::Timeout`].
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }

    /// Who is in `room`, with their connection counts and `info`, sorted by user.
    pub async fn members(&self, room: &Room) -> Result<Vec<Member>> {
        let mut out = Vec::new();
        self.scan(&presence::room_filter(room), |e| {
            if let (Some((_, user)), Some(v)) =
                (presence::parse_key(&e.key), Entry::decode(&e.value))
                && v.conns() > 0
            {
                out.push(Member {
                    user,
                    conns: v.conns(),
                    info: v.info,
                });
            }
            true
        })
        .await?;
        out.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(out)
    }

    /// How many users are in `room`.
    pub async fn count(&self, room: &Room) -> Result<usize> {
        let mut n = 0;
        self.scan(&presence::room_filter(room), |e| {
            n += usize::from(Entry::decode(&e.value).is_some_and(|v| v.conns() > 0));
            true
        })
        .await?;
        Ok(n)
    }

    /// Whether `user` has at least one connection anywhere (they are present in
    /// their own room `user:<id>` while connected).
    pub async fn is_online(&self, user: &UserId) -> Result<bool> {
        Ok(self
            .online_bulk(std::slice::from_ref(user))
            .await?
            .get(user)
            .copied()
            .unwrap_or(false))
    }

    /// Online status for many users at once (one request per 1000 users).
    pub async fn online_bulk(&self, users: &[UserId]) -> Result<HashMap<UserId, bool>> {
        let mut out: HashMap<UserId, bool> = users.iter().map(|u| (u.clone(), false)).collect();
        for chunk in users.chunks(MULTI_LAST_MAX) {
            let subjects: Vec<String> = chunk
                .iter()
                .map(|u| self.subject(&presence::key(&Room::for_user(u), u)))
                .collect();
            let body = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
            self.batch_request(body, &mut |e| {
                if let (Some((_, user)), Some(v)) =
                    (presence::parse_key(&e.key), Entry::decode(&e.value))
                {
                    out.insert(user, v.conns() > 0);
                }
                true
            })
            .await?;
        }
        Ok(out)
    }

    /// The rooms `user` is in, with their connection count in each.
    pub async fn rooms_of(&self, user: &UserId) -> Result<Vec<(Room, u64)>> {
        let mut out = Vec::new();
        self.scan(&presence::user_filter(user), |e| {
            if let (Some((room, _)), Some(v)) =
                (presence::parse_key(&e.key), Entry::decode(&e.value))
                && v.conns() > 0
            {
                out.push((room, v.conns()));
            }
            true
        })
        .await?;
        out.sort();
        Ok(out)
    }

    /// The stored value of one key, if present.
    pub async fn get(&self, key: &str) -> Result<Option<StoredEntry>> {
        let body = serde_json::json!({ "multi_last": [self.subject(key)], "batch": 1 });
        let mut found = None;
        self.batch_request(body, &mut |e| {
            found = Some(e);
            false
        })
        .await?;
        Ok(found)
    }

    /// Calls `f` with every live value whose key matches `filter` (a KV key
    /// pattern such as `p.channel.42.*`), oldest first; stops when `f` returns
    /// `false`.
    pub async fn scan(
        &self,
        filter: &str,
        mut f: impl FnMut(StoredEntry) -> bool + Send,
    ) -> Result<()> {
        let subject = self.subject(filter);
        let mut next = 1u64;
        loop {
            let body =
                serde_json::json!({ "seq": next, "next_by_subj": subject, "batch": self.batch });
            let mut last = None;
            let mut stop = false;
            let pending = self
                .batch_request(body, &mut |e| {
                    last = Some(e.revision);
                    if !stop && !f(e) {
                        stop = true;
                    }
                    true
                })
                .await?;
            if stop {
                return Ok(());
            }
            match (last, pending) {
                (Some(l), Some(p)) if p > 0 => next = l + 1,
                _ => return Ok(()),
            }
        }
    }

    /// Sends one batched Direct Get and feeds every live value to `f`. Returns
    /// the server's count of matching messages left after the batch.
    async fn batch_request(
        &self,
        body: serde_json::Value,
        f: &mut (dyn FnMut(StoredEntry) -> bool + Send),
    ) -> Result<Option<u64>> {
        let prefix = format!("$KV.{}.", self.bucket);
        let mut wanted = true;
        let read = crate::direct::batch(&self.client, &self.api, &body, self.timeout, |msg| {
            let h = msg.headers.as_ref();
            let (Some(subject), Some(seq)) = (
                header(h, "Nats-Subject"),
                header(h, "Nats-Sequence").and_then(|s| s.parse::<u64>().ok()),
            ) else {
                return true;
            };
            if !wanted || !is_value(h) {
                return true;
            }
            let Some(key) = subject.strip_prefix(&prefix) else {
                return true;
            };
            wanted = f(StoredEntry {
                key: key.to_owned(),
                revision: seq,
                value: msg.payload.clone(),
            });
            true
        })
        .await;
        use crate::direct::BatchError;
        read.map_err(|e| match e {
            BatchError::Timeout => Error::new(
                ErrorKind::Timeout,
                format!(
                    "the presence bucket `{}` did not answer in time (is it created? run `herald setup`)",
                    self.bucket
                ),
            ),
            BatchError::NoResponders => Error::new(
                ErrorKind::NoBucket,
                format!(
                    "no presence bucket `{}` (or direct gets are off): run `herald setup`",
                    self.bucket
                ),
            ),
            e => read_error("reading presence", e),
        })
    }
}
