//! A membership service: an in-memory table of who belongs to which room, used as
//! the join authorizer, and published on every change — `member:added` /
//! `member:removed` to the room, and the member's live connections are made to join
//! or leave it at once.

use herald_protocol::{Room, UserId};
use herald_publish::{JoinRequest, Publisher, ServiceHandle, Verdict, authorizer, herald_events};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// Payload of `member:added` and `member:removed`.
#[derive(Debug, Clone, Serialize, Deserialize, ts_rs::TS)]
pub struct MemberChange {
    /// The user (raw `sub`).
    pub user: String,
}

herald_events! {
    /// A user became a member of the room.
    pub MemberAdded => "member:added": MemberChange;
    /// A user stopped being a member of the room.
    pub MemberRemoved => "member:removed": MemberChange;
}

/// The membership table, shared by the authorizer and the mutations.
#[derive(Debug, Clone)]
pub struct Membership {
    table: Arc<RwLock<HashMap<Room, HashSet<UserId>>>>,
    publisher: Publisher,
}

impl Membership {
    /// An empty table publishing through `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self {
            table: Arc::default(),
            publisher,
        }
    }

    /// Whether `user` is a member of `room`.
    pub fn is_member(&self, user: &UserId, room: &Room) -> bool {
        self.table
            .read()
            .map(|t| t.get(room).is_some_and(|m| m.contains(user)))
            .unwrap_or(false)
    }

    fn set(&self, user: &UserId, room: &Room, member: bool) -> bool {
        let Ok(mut t) = self.table.write() else {
            return false;
        };
        let members = t.entry(room.clone()).or_default();
        if member {
            members.insert(user.clone())
        } else {
            members.remove(user)
        }
    }

    /// Adds `user` to `room`; then tells the room and joins the user's connections.
    pub async fn add(&self, user: &UserId, room: &Room) -> herald_publish::Result<()> {
        if self.set(user, room, true) {
            let change = MemberChange {
                user: user.as_str().to_owned(),
            };
            self.publisher.send::<MemberAdded>(room, &change).await?;
            self.publisher.join_user_to(user, room).await?;
        }
        Ok(())
    }

    /// Removes `user` from `room`; then tells the room and makes the user's
    /// connections leave. The durable event and the control command travel different
    /// paths (JetStream, core NATS), so the removed user may or may not see
    /// `member:removed` before its `left` frame.
    pub async fn remove(&self, user: &UserId, room: &Room) -> herald_publish::Result<()> {
        if self.set(user, room, false) {
            let change = MemberChange {
                user: user.as_str().to_owned(),
            };
            self.publisher.send::<MemberRemoved>(room, &change).await?;
            self.publisher.remove_user_from(user, room).await?;
        }
        Ok(())
    }

    /// The authorizer's rule: members may join.
    pub fn decide(&self, req: &JoinRequest) -> Verdict {
        if self.is_member(&req.user, &req.room) {
            Verdict::Allow
        } else {
            Verdict::deny("not a member")
        }
    }

    /// Answers `P.authz.join` from this table, in the queue group `membership`.
    pub async fn run_authorizer(
        &self,
        client: async_nats::Client,
        prefix: &str,
    ) -> herald_publish::Result<ServiceHandle> {
        let this = self.clone();
        authorizer(client, prefix, "membership", move |req| {
            let verdict = this.decide(&req);
            async move { Ok(verdict) }
        })
        .await
    }
}
