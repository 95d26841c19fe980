//! Every NATS subject Herald uses, derived from one configurable prefix.
//!
//! Subjects are only ever built from validated [`Room`]s and [`UserId`]s, so a
//! client-supplied name can never add tokens or wildcards to a subject.

use crate::room::Room;
use crate::user::UserId;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "herald";

/// Why a subject prefix is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "subject prefix must be dot-separated tokens of [A-Za-z0-9_-], e.g. `herald` or `acme.herald`"
)]
pub struct BadPrefix;

/// Builds and parses Herald's subjects for one prefix (`P` in the contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// Validates the prefix.
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let ok = !prefix.is_empty()
            && prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(BadPrefix)
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P.room.<kind>.<id>`: where producers publish durable events.
    ///
    /// ```
    /// use herald_protocol::{Room, Subjects};
    /// let s = Subjects::default();
    /// assert_eq!(s.room(&Room::parse("user:6").unwrap()), "herald.room.user.6");
    /// ```
    pub fn room(&self, room: &Room) -> String {
        format!("{}.room.{}.{}", self.prefix, room.kind(), room.id())
    }

    /// `P.room.>`: the stream's subjects.
    pub fn room_wildcard(&self) -> String {
        format!("{}.room.>", self.prefix)
    }

    /// `P.live.room.<kind>.<id>`: what edges subscribe to.
    pub fn live(&self, room: &Room) -> String {
        format!("{}.live.room.{}.{}", self.prefix, room.kind(), room.id())
    }

    /// `P.live.room.>`: the RePublish destination.
    pub fn live_wildcard(&self) -> String {
        format!("{}.live.room.>", self.prefix)
    }

    /// `P.rpc.<event>`: a client's `emit`. The event name must be valid
    /// ([`crate::headers::valid_event_name`]).
    pub fn rpc(&self, event: &str) -> String {
        format!("{}.rpc.{event}", self.prefix)
    }

    /// `P.authz.join`: may user U join room R?
    pub fn authz_join(&self) -> String {
        format!("{}.authz.join", self.prefix)
    }

    /// `P.authn.connect`: the optional connect hook.
    pub fn authn_connect(&self) -> String {
        format!("{}.authn.connect", self.prefix)
    }

    /// `P.ctl.user.<enc(sub)>`: control of one user's live connections.
    pub fn ctl_user(&self, user: &UserId) -> String {
        format!("{}.ctl.user.{}", self.prefix, user.encoded())
    }

    /// `P.ctl.user.*`: every user's control subject.
    pub fn ctl_user_wildcard(&self) -> String {
        format!("{}.ctl.user.*", self.prefix)
    }

    /// `P.events.<what>`: lifecycle events published by edges
    /// (`what` is one of the fixed names in [`LifecycleEvent`]).
    pub fn lifecycle(&self, what: LifecycleEvent) -> String {
        format!("{}.events.{}", self.prefix, what.as_str())
    }

    /// Recovers the room from a `P.room.…` or `P.live.room.…` subject.
    ///
    /// ```
    /// use herald_protocol::Subjects;
    /// let s = Subjects::default();
    /// let r = s.room_of("herald.live.room.channel.42").unwrap();
    /// assert_eq!(r.as_str(), "channel:42");
    /// assert!(s.room_of("herald.live.room.channel.4.2").is_none());
    /// ```
    pub fn room_of(&self, subject: &str) -> Option<Room> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        let rest = rest
            .strip_prefix(".live.room.")
            .or_else(|| rest.strip_prefix(".room."))?;
        let (kind, id) = rest.split_once('.')?;
        Room::from_parts(kind, id).ok()
    }

    /// Recovers the user from a `P.ctl.user.<enc>` subject.
    pub fn user_of_ctl(&self, subject: &str) -> Option<UserId> {
        let enc = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".ctl.user.")?;
        UserId::decode(enc).ok()
    }
}

/// The lifecycle events an edge publishes on `P.events.…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A connection authenticated (`P.events.conn.open`).
    ConnOpen,
    /// A connection ended (`P.events.conn.close`).
    ConnClose,
    /// A connection joined a room (`P.events.room.join`).
    RoomJoin,
    /// A connection left a room (`P.events.room.leave`).
    RoomLeave,
    /// A user's first connection anywhere in the cluster (`P.events.user.online`).
    UserOnline,
    /// A user's last connection anywhere in the cluster ended (`P.events.user.offline`).
    UserOffline,
}

impl LifecycleEvent {
    /// The subject suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnOpen => "conn.open",
            Self::ConnClose => "conn.close",
            Self::RoomJoin => "room.join",
            Self::RoomLeave => "room.leave",
            Self::UserOnline => "user.online",
            Self::UserOffline => "user.offline",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_is_validated() {
        assert!(Subjects::new("herald").is_ok());
        assert!(Subjects::new("acme.herald").is_ok());
        for bad in ["", ".", "a..b", "a.*", "a.>", "a b", "a."] {
            assert!(Subjects::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_subjects_escape() {
        let s = Subjects::new("p").unwrap();
        let u = UserId::new("a.b@c").unwrap();
        let subj = s.ctl_user(&u);
        assert_eq!(subj.matches('.').count(), 3);
        assert_eq!(s.user_of_ctl(&subj).unwrap(), u);
        assert_eq!(s.room(&Room::for_user(&u)).matches('.').count(), 3);
    }

    proptest! {
        #[test]
        fn room_subjects_have_exactly_four_tokens(kind in "[a-z][a-z0-9_-]{0,31}", id in "[A-Za-z0-9_=-]{1,128}") {
            prop_assume!(kind != "user");
            let s = Subjects::default();
            let room = Room::parse(&format!("{kind}:{id}")).unwrap();
            let subj = s.room(&room);
            prop_assert_eq!(subj.split('.').count(), 4);
            prop_assert_eq!(s.room_of(&subj).unwrap(), room.clone());
            prop_assert_eq!(s.room_of(&s.live(&room)).unwrap(), room);
        }
    }
}
