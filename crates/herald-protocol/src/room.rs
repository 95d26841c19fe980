//! Room names: `<kind>:<id>`, validated so that they can never smuggle NATS
//! wildcards or extra subject tokens.
//!
//! `kind` matches `[a-z][a-z0-9_-]{0,31}`, `id` is 1..=128 bytes of
//! `[A-Za-z0-9_=-]`. The one exception is the private room of a user, `user:<enc>`,
//! whose id is the encoded user id (see [`crate::user`]) and may be longer, up to
//! the length of an encoded 256-byte id. Everything else is rejected with
//! [`RoomError`], which the edge reports as `invalid_room`.

use crate::user::{MAX_USER_ID_BYTES, UserId};
use std::fmt;

/// Longest room kind, in bytes.
pub const MAX_KIND_BYTES: usize = 32;
/// Longest room id, in bytes (user rooms excepted).
pub const MAX_ID_BYTES: usize = 128;
/// Longest id of a `user:` room: `=` plus base64 of a maximal user id.
pub const MAX_USER_ROOM_ID_BYTES: usize = 1 + (MAX_USER_ID_BYTES * 4).div_ceil(3);
/// The kind of the per-user private rooms.
pub const USER_KIND: &str = "user";

/// Why a string is not a room name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// No `:` separating kind and id.
    #[error("room must look like <kind>:<id>, e.g. channel:42")]
    MissingColon,
    /// The kind part is empty, too long or has characters outside `[a-z0-9_-]`.
    #[error("room kind must match [a-z][a-z0-9_-]{{0,31}}")]
    BadKind,
    /// The id part is empty, too long or has characters outside `[A-Za-z0-9_=-]`.
    #[error("room id must be 1..=128 characters of [A-Za-z0-9_=-]")]
    BadId,
    /// A `user:` room whose id is not a valid encoded user id.
    #[error("user room id is not a valid encoded user id")]
    BadUserId,
}

/// A validated room name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room {
    name: String,
    colon: usize,
}

fn valid_kind(kind: &str) -> bool {
    let b = kind.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_KIND_BYTES
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Whether a byte may appear in a room id (and so in one subject token).
pub fn is_id_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'=' || c == b'-'
}

impl Room {
    /// Parses and validates a room name.
    ///
    /// ```
    /// use herald_protocol::Room;
    /// let r = Room::parse("channel:42").unwrap();
    /// assert_eq!((r.kind(), r.id()), ("channel", "42"));
    /// assert!(Room::parse("channel:*").is_err());
    /// assert!(Room::parse("a.b:1").is_err());
    /// ```
    pub fn parse(name: &str) -> Result<Self, RoomError> {
        let colon = name.find(':').ok_or(RoomError::MissingColon)?;
        let (kind, id) = (&name[..colon], &name[colon + 1..]);
        if !valid_kind(kind) {
            return Err(RoomError::BadKind);
        }
        let max = if kind == USER_KIND {
            MAX_USER_ROOM_ID_BYTES
        } else {
            MAX_ID_BYTES
        };
        if id.is_empty() || id.len() > max || !id.bytes().all(is_id_byte) {
            return Err(RoomError::BadId);
        }
        if kind == USER_KIND {
            UserId::decode(id).map_err(|_| RoomError::BadUserId)?;
        }
        Ok(Self {
            name: name.to_owned(),
            colon,
        })
    }

    /// The private room of a user: `user:<enc(sub)>`.
    pub fn for_user(user: &UserId) -> Self {
        let name = format!("{USER_KIND}:{}", user.encoded());
        Self {
            colon: USER_KIND.len(),
            name,
        }
    }

    /// Builds a room from a kind and id (as found in a subject), validating both.
    pub fn from_parts(kind: &str, id: &str) -> Result<Self, RoomError> {
        Self::parse(&format!("{kind}:{id}"))
    }

    /// The whole name, `kind:id`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The kind, before the colon.
    pub fn kind(&self) -> &str {
        &self.name[..self.colon]
    }

    /// The id, after the colon.
    pub fn id(&self) -> &str {
        &self.name[self.colon + 1..]
    }

    /// If this is a user's private room, that user.
    pub fn user(&self) -> Option<UserId> {
        if self.kind() == USER_KIND {
            UserId::decode(self.id()).ok()
        } else {
            None
        }
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Room({})", self.name)
    }
}

impl std::str::FromStr for Room {
    type Err = RoomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_contract_examples() {
        for r in [
            "channel:42",
            "dm:7-9",
            "program:abc",
            "user:6",
            "a:=",
            "k_1-x:A_b=c-9",
        ] {
            assert!(Room::parse(r).is_ok(), "{r}");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        for r in [
            "",
            "channel",
            ":1",
            "channel:",
            "channel:4.2",
            "chan.nel:1",
            "channel:*",
            "channel:>",
            "*:1",
            ">:1",
            "channel:a b",
            "channel: ",
            "Channel:1",
            "1channel:1",
            "channel:4\u{2024}2",
            "channel:１",
            "channel:a:b",
            "channel:a\n",
            "channel:a\0",
            "user:a.b",
            "user:=Ng",
        ] {
            assert!(Room::parse(r).is_err(), "{r:?} must be rejected");
        }
        assert!(Room::parse(&format!("c:{}", "a".repeat(129))).is_err());
        assert!(Room::parse(&format!("{}:1", "a".repeat(33))).is_err());
        assert!(Room::parse(&format!("c:{}", "a".repeat(128))).is_ok());
    }

    #[test]
    fn user_rooms_hold_the_longest_encoded_ids() {
        let u = UserId::new("é".repeat(128)).unwrap();
        let r = Room::for_user(&u);
        assert_eq!(Room::parse(r.as_str()).unwrap(), r);
        assert_eq!(r.user().unwrap(), u);
    }

    proptest! {
        #[test]
        fn valid_rooms_never_contain_subject_metacharacters(s in "\\PC{0,40}") {
            if let Ok(r) = Room::parse(&s) {
                prop_assert!(!r.as_str().contains(['.', '*', '>', ' ', '\t', '\n']));
                prop_assert_eq!(Room::parse(r.as_str()).unwrap(), r);
            }
        }

        #[test]
        fn generated_rooms_parse(kind in "[a-z][a-z0-9_-]{0,31}", id in "[A-Za-z0-9_=-]{1,128}") {
            prop_assume!(kind != USER_KIND);
            let r = Room::parse(&format!("{kind}:{id}")).unwrap();
            prop_assert_eq!(r.kind(), kind.as_str());
            prop_assert_eq!(r.id(), id.as_str());
        }
    }
}
