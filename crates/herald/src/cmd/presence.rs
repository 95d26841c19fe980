//! `herald presence ROOM` and `herald presence --user U`: who is online, read
//! from the presence bucket exactly as edges and the Rust SDK read it.

use anyhow::{Context as _, Result, bail};
use herald_protocol::{Room, UserId};
use herald_publish::Presence;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// Arguments of `herald presence`.
#[derive(Debug, clap::Args)]
pub struct PresenceArgs {
    /// Room, e.g. channel:42: list who is in it.
    room: Option<String>,
    /// A user id: whether they are online, and in which rooms.
    #[arg(long, conflicts_with = "room")]
    user: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the answer.
pub async fn run(file: Option<&Path>, a: PresenceArgs) -> Result<()> {
    let cfg = super::load_config(file)?;
    let client = super::nats_client(&cfg).await?;
    let presence = Presence::new(client, cfg.presence.bucket.clone());
    // Built whole, then written once: a reader that goes away (`| head`) is
    // not an error.
    let mut out = String::new();
    match (a.room, a.user) {
        (Some(room), None) => {
            let room = Room::parse(&room).with_context(|| format!("room `{room}`"))?;
            let members = presence.members(&room).await?;
            if a.json {
                let v = serde_json::json!({ "room": room.as_str(), "users": members });
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{room}: {} user(s) online", members.len())?;
                for m in &members {
                    let info = m.info.as_ref().map(|i| i.to_string()).unwrap_or_default();
                    writeln!(out, "  {}\t{} conn(s)\t{info}", m.user, m.conns)?;
                }
            }
        }
        (None, Some(user)) => {
            let user = UserId::new(user.clone()).with_context(|| format!("user `{user}`"))?;
            let rooms = presence.rooms_of(&user).await?;
            let own = Room::for_user(&user);
            let conns = rooms.iter().find(|(r, _)| *r == own).map_or(0, |(_, n)| *n);
            if a.json {
                let rooms: Vec<_> = rooms
                    .iter()
                    .map(|(r, n)| serde_json::json!({"room": r.as_str(), "conns": n}))
                    .collect();
                let v = serde_json::json!({
                    "user": user.as_str(),
                    "online": conns > 0,
                    "conns": conns,
                    "rooms": rooms,
                });
                writeln!(out, "{v}")?;
            } else if conns == 0 {
                writeln!(out, "{user} is offline")?;
            } else {
                writeln!(out, "{user} is online with {conns} connection(s), in:")?;
                for (r, n) in &rooms {
                    writeln!(out, "  {r}\t{n} conn(s)")?;
                }
            }
        }
        _ => bail!(
            "give a room (`herald presence channel:42`) or a user (`herald presence --user 6`)"
        ),
    }
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}
