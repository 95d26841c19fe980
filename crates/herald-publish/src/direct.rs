//! Batched Direct Get: reading a stream's stored messages a batch per round
//! trip, without creating consumer state on the server (NATS 2.11+, streams
//! with `allow_direct`).
//!
//! One request (`{"seq":N,"next_by_subj":"…","batch":B}` on
//! `$JS.API.DIRECT.GET.<stream>`) is answered by up to `B` messages, then a
//! status-204 end-of-batch message whose `Nats-Num-Pending` header says how many
//! matching messages remain. [`batch`] sends one such request and hands each
//! message to a callback; the edge's catch-up reads and [`crate::Presence`]
//! page through a subject with it. A Direct Get may be answered by a replica
//! that is behind: use it where a slightly stale answer is safe.

use async_nats::{Client, Message, StatusCode};
use futures::StreamExt as _;
use std::time::Duration;

/// Why a batched Direct Get failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Subscribing to the reply inbox failed.
    #[error("subscribing for a batch: {0}")]
    Subscribe(String),
    /// Sending the request failed.
    #[error("requesting a batch: {0}")]
    Request(String),
    /// No message arrived within the timeout.
    #[error("no answer in time")]
    Timeout,
    /// Nobody answers Direct Gets on that subject: the stream does not exist,
    /// or it does not allow direct gets.
    #[error("no responders (no such stream, or direct gets are off)")]
    NoResponders,
    /// The server answered with an error status.
    #[error("status {0}")]
    Status(String),
    /// The reply subscription ended early (the client is closing).
    #[error("the reply subscription closed")]
    Closed,
}

/// Sends one batched Direct Get `body` to `api_subject`
/// (`$JS.API.DIRECT.GET.<stream>`) and calls `f` with each stored message, in
/// stream order, until the end of the batch or until `f` returns `false`.
///
/// Returns the number of matching messages left after the batch (the
/// end-of-batch `Nats-Num-Pending`; `Some(0)` when nothing matched, `None` when
/// `f` stopped early or the server did not say). Each message's
/// `Nats-Sequence` and `Nats-Subject` headers name it.
pub async fn batch(
    client: &Client,
    api_subject: &str,
    body: &serde_json::Value,
    timeout: Duration,
    mut f: impl FnMut(Message) -> bool,
) -> Result<Option<u64>, BatchError> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BatchError::Subscribe(e.to_string()))?;
    client
        .publish_with_reply(api_subject.to_owned(), inbox, body.to_string().into())
        .await
        .map_err(|e| BatchError::Request(e.to_string()))?;
    let result = loop {
        let msg = match tokio::time::timeout(timeout, sub.next()).await {
            Err(_) => break Err(BatchError::Timeout),
            Ok(None) => break Err(BatchError::Closed),
            Ok(Some(m)) => m,
        };
        match msg.status {
            // End of batch: carries how many matching messages remain.
            Some(s) if s.as_u16() == 204 => {
                break Ok(msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Num-Pending"))
                    .and_then(|v| v.as_str().parse().ok()));
            }
            Some(StatusCode::NOT_FOUND) => break Ok(Some(0)),
            Some(StatusCode::NO_RESPONDERS) => break Err(BatchError::NoResponders),
            Some(s) if s != StatusCode::OK => {
                break Err(BatchError::Status(format!("{s}: {:?}", msg.description)));
            }
            _ => {}
        }
        if !f(msg) {
            break Ok(None);
        }
    };
    let _ = sub.unsubscribe().await;
    result
}
