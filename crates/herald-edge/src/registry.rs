//! Which connections this edge holds, by user: for the per-user connection
//! limit and for service control messages (`P.ctl.user.<u>`).

use crate::conn::handle::{ConnHandle, ConnId};
use herald_protocol::UserId;
use std::collections::HashMap;
use std::sync::Mutex;

/// The edge's live connections, grouped by user.
#[derive(Debug, Default)]
pub struct Registry {
    users: Mutex<HashMap<UserId, HashMap<ConnId, ConnHandle>>>,
}

impl Registry {
    /// Adds a connection unless its user already has `max` here. Returns how many
    /// connections the user has afterwards, or `None` if refused.
    pub fn register(&self, h: &ConnHandle, max: usize) -> Option<usize> {
        let mut users = self.users.lock().ok()?;
        let conns = users.entry(h.user().clone()).or_default();
        if conns.len() >= max {
            return None;
        }
        conns.insert(h.id().clone(), h.clone());
        Some(conns.len())
    }

    /// Removes a connection; returns how many the user still has here.
    pub fn unregister(&self, h: &ConnHandle) -> usize {
        let Ok(mut users) = self.users.lock() else {
            return 0;
        };
        let Some(conns) = users.get_mut(h.user()) else {
            return 0;
        };
        conns.remove(h.id());
        let left = conns.len();
        if left == 0 {
            users.remove(h.user());
        }
        left
    }

    /// The user's connections here (all, or just `conn`).
    pub fn of_user(&self, user: &UserId, conn: Option<&str>) -> Vec<ConnHandle> {
        let Ok(users) = self.users.lock() else {
            return Vec::new();
        };
        users
            .get(user)
            .map(|c| {
                c.values()
                    .filter(|h| conn.is_none_or(|id| &**h.id() == id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every connection (for draining).
    pub fn all(&self) -> Vec<ConnHandle> {
        let Ok(users) = self.users.lock() else {
            return Vec::new();
        };
        users.values().flat_map(|c| c.values().cloned()).collect()
    }
}
