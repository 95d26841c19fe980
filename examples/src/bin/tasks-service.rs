//! Runs the tasks service against `herald dev` (or `NATS_URL`): its API is NATS
//! request/reply on `tasks.create|update|delete`, and every mutation publishes to
//! the room `project:<project>`.
//!
//! ```sh
//! herald dev &
//! cargo run -p herald-examples --bin tasks-service
//! nats req tasks.create '{"project":"apollo","title":"Write docs","assignee":"alice"}'
//! nats req tasks.update '{"id":1,"done":true}'
//! nats req tasks.delete '{"id":1}'
//! ```

use herald_examples::{init_logging, nats_url, prefix, tasks::Tasks};
use herald_publish::Publisher;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let client = async_nats::connect(nats_url()).await?;
    let publisher = Publisher::builder()
        .prefix(prefix())
        .build(client.clone())?;
    let tasks = Tasks::new(publisher);
    let api = std::env::var("TASKS_API").unwrap_or_else(|_| "tasks".into());
    let service = tasks.serve(client, &api).await?;
    tracing::info!(%api, "tasks service answering {api}.create|update|delete");
    tokio::select! {
        _ = service => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let stats = tasks.publisher().detached_stats();
    tracing::info!(?stats, "stopping");
    Ok(())
}
