//! `herald publish ROOM EVENT JSON`: publish an event as a producer would.

use anyhow::{Context as _, Result, bail};
use async_nats::HeaderMap;
use herald_protocol::{Room, headers};
use std::path::Path;

/// Arguments of `herald publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Room, e.g. channel:42 or user:6.
    room: String,
    /// Event name, e.g. message:new.
    event: String,
    /// JSON payload.
    #[arg(default_value = "null")]
    json: String,
    /// Deliver without storing (no sequence, no resume).
    #[arg(long)]
    volatile: bool,
    /// Idempotency key: a repeated publish with the same id is stored once.
    #[arg(long)]
    msg_id: Option<String>,
    /// Skip this user's connections.
    #[arg(long)]
    exclude_user: Option<String>,
    /// Skip this connection.
    #[arg(long)]
    exclude_conn: Option<String>,
}

/// Publishes and prints the stream sequence.
pub async fn run(file: Option<&Path>, a: PublishArgs) -> Result<()> {
    let cfg = super::load_config(file)?;
    let room = Room::parse(&a.room).with_context(|| format!("room `{}`", a.room))?;
    if !headers::valid_event_name(&a.event) {
        bail!(
            "event `{}` must be 1..=64 characters of [A-Za-z0-9_:.-]",
            a.event
        );
    }
    serde_json::from_str::<serde_json::Value>(&a.json)
        .with_context(|| format!("payload `{}` is not JSON", a.json))?;
    let subjects = cfg.subjects();
    let client = super::nats_client(&cfg).await?;
    let mut h = HeaderMap::new();
    h.insert(headers::EVENT, a.event.as_str());
    if let Some(u) = &a.exclude_user {
        h.insert(
            headers::EXCLUDE_USER,
            herald_protocol::UserId::new(u.clone())?.encoded().as_str(),
        );
    }
    if let Some(c) = &a.exclude_conn {
        h.insert(headers::EXCLUDE_CONN, c.as_str());
    }
    if a.volatile {
        client
            .publish_with_headers(subjects.live(&room), h, a.json.into())
            .await?;
        client.flush().await?;
        println!("published (volatile) to {room}");
        return Ok(());
    }
    if let Some(id) = &a.msg_id {
        h.insert(headers::MSG_ID, id.as_str());
    }
    let js = async_nats::jetstream::new(client.clone());
    let ack = js
        .publish_with_headers(subjects.room(&room), h, a.json.into())
        .await?
        .await
        .context("JetStream did not store the event: is the stream set up (`herald setup`)?")?;
    println!(
        "published to {room}: seq {}{}",
        ack.sequence,
        if ack.duplicate {
            " (duplicate, not stored again)"
        } else {
            ""
        }
    );
    Ok(())
}
