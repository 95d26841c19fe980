//! Service control of live connections: `P.ctl.user.<enc(sub)>`.
//!
//! A service sends `{"op":"join","room":"channel:42"}`, `{"op":"leave","room":…}`
//! or `{"op":"disconnect","code":4003,"reason":"banned","reconnect":false}`
//! (optionally with `"conn"` to target one connection). Every edge holding a
//! connection of that user applies it. One wildcard subscription per edge: the
//! traffic is small, and a per-user subscription would cost a subscription per
//! connected user.

use crate::conn::handle::{Command, Disconnect};
use crate::edge::Edge;
use futures::StreamExt as _;
use herald_protocol::{CloseCode, Room};
use std::sync::Arc;

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Control {
    Join {
        room: String,
        #[serde(default)]
        conn: Option<String>,
    },
    Leave {
        room: String,
        #[serde(default)]
        conn: Option<String>,
    },
    Disconnect {
        #[serde(default)]
        code: Option<u16>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        reconnect: Option<bool>,
        #[serde(default)]
        conn: Option<String>,
    },
}

/// Runs the control subscription until shutdown.
pub async fn run(edge: Arc<Edge>) {
    let mut sub = match edge
        .client
        .subscribe(edge.subjects.ctl_user_wildcard())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to the control subject");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = edge.shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(user) = edge.subjects.user_of_ctl(&msg.subject) else {
            tracing::warn!(subject = %msg.subject, "control message for an invalid user encoding");
            continue;
        };
        let ctl: Control = match serde_json::from_slice(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "ignoring a malformed control message");
                continue;
            }
        };
        let (cmd, conn) = match ctl {
            Control::Join { room, conn } | Control::Leave { room, conn }
                if Room::parse(&room).is_err() =>
            {
                tracing::warn!(room = %room, conn = ?conn, "control message names an invalid room");
                continue;
            }
            Control::Join { room, conn } => match Room::parse(&room) {
                Ok(r) => (Command::Join(r), conn),
                Err(_) => continue,
            },
            Control::Leave { room, conn } => match Room::parse(&room) {
                Ok(r) => (Command::Leave(r), conn),
                Err(_) => continue,
            },
            Control::Disconnect {
                code,
                reason,
                reconnect,
                conn,
            } => {
                let code = match code {
                    Some(c @ (1000 | 1012 | 1013 | 4000..=4999)) => CloseCode(c),
                    _ => CloseCode::FORBIDDEN,
                };
                let mut d = Disconnect::new(
                    code,
                    reason.unwrap_or_else(|| "disconnected by the server".into()),
                );
                if let Some(r) = reconnect {
                    d.reconnect = r;
                }
                (Command::Disconnect(d), conn)
            }
        };
        let targets = edge.registry.of_user(&user, conn.as_deref());
        for h in &targets {
            if !h.command(cmd.clone()) {
                tracing::warn!(conn = %h.id(), "control command dropped: the connection has too many pending");
            }
        }
        tracing::debug!(user = %user, targets = targets.len(), "control message applied");
    }
}
