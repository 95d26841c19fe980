//! Runs the chat service against `herald dev` (or `NATS_URL`).
//!
//! ```sh
//! herald dev &
//! cargo run -p herald-examples --bin chat-service
//! ```
//! A client then sends `{"type":"emit","id":1,"event":"message:send","data":{"room":"channel:1","text":"hi"}}`.

use herald_examples::{chat, init_logging, nats_url, prefix};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let client = async_nats::connect(nats_url()).await?;
    let service = chat::run(client, &prefix(), chat::Store::default()).await?;
    tracing::info!("chat service answering message:send");
    tokio::select! {
        () = service.join() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
