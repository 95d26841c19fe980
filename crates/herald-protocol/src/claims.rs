//! The JWT claims Herald understands, and room patterns.
//!
//! Besides the registered claims (`sub`, `exp`, `nbf`, `iss`, `aud`), a token may carry
//! `rooms` (patterns the user may join), `join` (rooms joined automatically at connect),
//! `publish` (patterns the user may send volatile events to) and `info` (free-form JSON
//! shown to others in presence).
//!
//! A pattern is either an exact room (`channel:42`), a kind with a wildcard id
//! (`channel:*`), a kind with an id prefix (`program:abc-*`), or `*` (every room).
//! Patterns never grant another user's private room: see [`Claims::may_join`].

use crate::room::{Room, USER_KIND};
use crate::user::UserId;
use serde::{Deserialize, Serialize};

/// The claims of a Herald token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (required).
    pub sub: String,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: a string or a list of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Room patterns the user may join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Rooms joined automatically at connect (must also be allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    /// Room patterns the user may `publish` volatile events to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Free-form user info, shown in presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// A pattern over room names, from the `rooms` and `publish` claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    /// `*`: any room.
    Any,
    /// `kind:prefix*` (an empty prefix means the whole kind).
    Prefix {
        /// The room kind.
        kind: String,
        /// The id prefix.
        prefix: String,
    },
    /// One exact room.
    Exact(Room),
}

impl RoomPattern {
    /// Parses a pattern; `None` if it is malformed (malformed patterns grant nothing).
    pub fn parse(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Self::Any);
        }
        if let Some(head) = s.strip_suffix('*') {
            let (kind, prefix) = head.split_once(':')?;
            // Validate by building a room from the pieces with a placeholder id.
            Room::from_parts(kind, &format!("{prefix}x")).ok()?;
            return Some(Self::Prefix {
                kind: kind.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Room::parse(s).ok().map(Self::Exact)
    }

    /// Whether the pattern covers `room`.
    pub fn matches(&self, room: &Room) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix { kind, prefix } => room.kind() == kind && room.id().starts_with(prefix),
            Self::Exact(r) => r == room,
        }
    }
}

/// Whether any of `patterns` covers `room` (malformed patterns are ignored).
pub fn any_matches(patterns: &[String], room: &Room) -> bool {
    patterns
        .iter()
        .filter_map(|p| RoomPattern::parse(p))
        .any(|p| p.matches(room))
}

/// What the token says about a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinDecision {
    /// The claims allow it.
    Allow,
    /// Never allowed: another user's private room.
    Deny,
    /// The claims do not decide: ask the authorizer.
    Undecided,
}

impl Claims {
    /// Decides a join from the claims alone. A user's own room is always allowed,
    /// another user's never, whatever the patterns say.
    pub fn may_join(&self, user: &UserId, room: &Room) -> JoinDecision {
        if room.kind() == USER_KIND {
            return if room.user().as_ref() == Some(user) {
                JoinDecision::Allow
            } else {
                JoinDecision::Deny
            };
        }
        if any_matches(&self.rooms, room) {
            JoinDecision::Allow
        } else {
            JoinDecision::Undecided
        }
    }

    /// Whether the `publish` claim allows volatile events to `room`. Another user's
    /// private room needs an exact pattern naming it.
    pub fn may_publish(&self, user: &UserId, room: &Room) -> bool {
        if room.kind() == USER_KIND && room.user().as_ref() != Some(user) {
            return self.publish.iter().any(|p| p == room.as_str());
        }
        any_matches(&self.publish, room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> Room {
        Room::parse(s).unwrap()
    }

    #[test]
    fn patterns() {
        let p = RoomPattern::parse("channel:*").unwrap();
        assert!(p.matches(&room("channel:1")));
        assert!(!p.matches(&room("dm:1")));
        let p = RoomPattern::parse("program:abc-*").unwrap();
        assert!(p.matches(&room("program:abc-1")));
        assert!(!p.matches(&room("program:abd-1")));
        assert!(RoomPattern::parse("channel.*").is_none());
        assert!(RoomPattern::parse("chan*").is_none());
        assert!(RoomPattern::parse("channel:a.b").is_none());
        assert_eq!(RoomPattern::parse("*"), Some(RoomPattern::Any));
    }

    #[test]
    fn user_rooms_are_private() {
        let me = UserId::new("6").unwrap();
        let claims = Claims {
            sub: "6".into(),
            rooms: vec!["*".into(), "user:*".into(), "user:7".into()],
            publish: vec!["user:*".into()],
            ..Default::default()
        };
        assert_eq!(claims.may_join(&me, &room("user:6")), JoinDecision::Allow);
        assert_eq!(claims.may_join(&me, &room("user:7")), JoinDecision::Deny);
        assert_eq!(
            claims.may_join(&me, &room("channel:1")),
            JoinDecision::Allow
        );
        assert!(!claims.may_publish(&me, &room("user:7")));
        assert!(claims.may_publish(&me, &room("user:6")));
        let none = Claims {
            sub: "6".into(),
            ..Default::default()
        };
        assert_eq!(
            none.may_join(&me, &room("channel:1")),
            JoinDecision::Undecided
        );
    }
}
