//! Runs the membership authorizer against `herald dev` (or `NATS_URL`).
//!
//! Members come from `MEMBERS`, e.g. `MEMBERS="team:1=6,7;team:2=8"`; each is added
//! (and published) at start.
//!
//! ```sh
//! herald dev &
//! MEMBERS="team:1=6,7" cargo run -p herald-examples --bin membership-authorizer
//! ```

use anyhow::Context as _;
use herald_examples::{init_logging, membership::Membership, nats_url, prefix};
use herald_protocol::{Room, UserId};
use herald_publish::Publisher;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let client = async_nats::connect(nats_url()).await?;
    let prefix = prefix();
    let publisher = Publisher::builder().prefix(&prefix).build(client.clone())?;
    let members = Membership::new(publisher);
    let spec = std::env::var("MEMBERS").unwrap_or_default();
    for group in spec.split(';').filter(|g| !g.is_empty()) {
        let (room, users) = group
            .split_once('=')
            .with_context(|| format!("`{group}`: expected room=user,user"))?;
        let room = Room::parse(room).with_context(|| format!("room `{room}`"))?;
        for user in users.split(',').filter(|u| !u.is_empty()) {
            members.add(&UserId::new(user)?, &room).await?;
        }
    }
    let service = members.run_authorizer(client, &prefix).await?;
    tracing::info!("membership authorizer answering joins");
    tokio::select! {
        () = service.join() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
