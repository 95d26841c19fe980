//! `herald setup`: create or update the stream and the presence bucket.

use anyhow::Result;
use std::path::Path;

/// Runs setup against the configured NATS.
pub async fn run(file: Option<&Path>) -> Result<()> {
    let cfg = super::load_config(file)?;
    crate::logging::init(&cfg.log);
    let client = super::nats_client(&cfg).await?;
    let r = herald_edge::stream::setup(&client, &cfg).await?;
    let verb = |new| if new { "created" } else { "updated" };
    println!("stream {}: {}", r.stream.0, verb(r.stream.1));
    println!(
        "bucket {}: {}",
        r.bucket.0,
        if r.bucket.1 { "created" } else { "present" }
    );
    client.flush().await?;
    Ok(())
}
