//! How presence is laid out in the KV bucket, so that edges (which write it),
//! the CLI and the producer SDK (which read it) agree on one scheme.
//!
//! One key per (room, user): `p.<kind>.<id>.<enc(user)>`, whose value says on
//! which edge instances the user has connections in that room and how many:
//! `{"edges":{"<instance>":2},"info":{…}}`. The key exists exactly while the
//! user has at least one connection in the room anywhere in the cluster, so a
//! room's members are the keys under `p.<kind>.<id>.*` and the rooms of a user
//! are the keys matching `p.*.*.<enc(user)>`. Creating the key (absent → present)
//! and purging it (present → absent) are compare-and-set writes: the one writer
//! that wins announces `presence_join` / `presence_leave`, so each transition is
//! announced once.
//!
//! Each edge instance also keeps `e.<instance>` alive with a TTL, refreshed every
//! heartbeat: one write per edge per interval, whatever its connection count.
//! When that key expires, the survivors remove the dead instance from every
//! value.

use crate::{Room, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The prefix of presence entries.
pub const ENTRY_PREFIX: &str = "p";
/// The prefix of edge heartbeat keys.
pub const EDGE_PREFIX: &str = "e";
/// The header on a presence announcement (`join` or `leave`) published on a
/// room's live subject.
pub const HEADER: &str = "Herald-Presence";

/// The key of `user`'s presence in `room`.
///
/// ```
/// use herald_protocol::{presence, Room, UserId};
/// let room = Room::parse("channel:42").unwrap();
/// assert_eq!(presence::key(&room, &UserId::new("6").unwrap()), "p.channel.42.6");
/// ```
pub fn key(room: &Room, user: &UserId) -> String {
    format!(
        "{ENTRY_PREFIX}.{}.{}.{}",
        room.kind(),
        room.id(),
        user.encoded()
    )
}

/// The key filter matching every user present in `room`.
pub fn room_filter(room: &Room) -> String {
    format!("{ENTRY_PREFIX}.{}.{}.*", room.kind(), room.id())
}

/// The key filter matching every room `user` is present in.
pub fn user_filter(user: &UserId) -> String {
    format!("{ENTRY_PREFIX}.*.*.{}", user.encoded())
}

/// The key filter matching every presence entry.
pub fn all_entries() -> String {
    format!("{ENTRY_PREFIX}.>")
}

/// The heartbeat key of an edge instance.
pub fn edge_key(instance: &str) -> String {
    format!("{EDGE_PREFIX}.{instance}")
}

/// The key filter matching every edge heartbeat.
pub fn all_edges() -> String {
    format!("{EDGE_PREFIX}.*")
}

/// The instance named by a heartbeat key.
pub fn instance_of(key: &str) -> Option<&str> {
    key.strip_prefix(EDGE_PREFIX)?.strip_prefix('.')
}

/// Parses a presence key back into its room and user.
///
/// ```
/// use herald_protocol::presence;
/// let (room, user) = presence::parse_key("p.user.=YUBi.=YUBi").unwrap();
/// assert_eq!(room.as_str(), "user:=YUBi");
/// assert_eq!(user.as_str(), "a@b");
/// assert!(presence::parse_key("e.edge-1").is_none());
/// ```
pub fn parse_key(key: &str) -> Option<(Room, UserId)> {
    let mut parts = key.split('.');
    if parts.next()? != ENTRY_PREFIX {
        return None;
    }
    let (kind, id, user) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((Room::from_parts(kind, id).ok()?, UserId::decode(user).ok()?))
}

/// Turns any edge name into a string usable as one KV key token (`[A-Za-z0-9_-]`).
///
/// ```
/// assert_eq!(herald_protocol::presence::token("pod.ns/1"), "pod_ns_1");
/// ```
pub fn token(name: &str) -> String {
    let t: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "edge".into() } else { t }
}

/// The value of a presence key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Connections of the user in the room, per edge instance.
    #[serde(default)]
    pub edges: BTreeMap<String, u32>,
    /// The user's `info` claim, from the connection that wrote last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

impl Entry {
    /// The user's connections in the room across the cluster.
    pub fn conns(&self) -> u64 {
        self.edges.values().map(|&n| u64::from(n)).sum()
    }

    /// Decodes a stored value; `None` for anything that is not an entry.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Encodes the value for storage.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One user present in a room, as queries report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The user id.
    pub user: UserId,
    /// Connections in the room across the cluster.
    pub conns: u64,
    /// The user's `info` claim, if the token carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entry_round_trips_and_counts() {
        let mut e = Entry::default();
        e.edges.insert("a".into(), 2);
        e.edges.insert("b".into(), 1);
        e.info = Some(serde_json::json!({"name": "Ada"}));
        let back = Entry::decode(&e.encode()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.conns(), 3);
        assert!(Entry::decode(b"not json").is_none());
    }

    #[test]
    fn filters_are_kv_patterns() {
        let room = Room::parse("dm:7-9").unwrap();
        let u = UserId::new("x.y").unwrap();
        assert_eq!(room_filter(&room), "p.dm.7-9.*");
        assert!(user_filter(&u).starts_with("p.*.*.="));
        assert_eq!(instance_of(&edge_key("e1")), Some("e1"));
    }

    proptest! {
        #[test]
        fn keys_round_trip(kind in "[a-z][a-z0-9_-]{0,31}", id in "[A-Za-z0-9_=-]{1,128}", user in "\\PC{1,64}") {
            prop_assume!(kind != "user");
            let room = Room::parse(&format!("{kind}:{id}")).unwrap();
            let user = UserId::new(user).unwrap();
            let k = key(&room, &user);
            prop_assert_eq!(k.split('.').count(), 4);
            prop_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)));
            prop_assert_eq!(parse_key(&k), Some((room, user)));
        }

        #[test]
        fn tokens_are_kv_safe(name in "\\PC{0,40}") {
            let t = token(&name);
            prop_assert!(!t.is_empty());
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }
}
