//! A chat service: clients `emit("message:send", {"room","text"})`; the service
//! checks the text, stores the message, publishes `message:new` to the room (durable,
//! idempotent, excluding the sender's connection, which gets the message in its reply)
//! and answers with the stored message.

use herald_protocol::Room;
use herald_publish::{
    EmitOptions, Publisher, RpcContext, ServiceError, ServiceHandle, herald_events, rpc_handler,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A stored chat message (also the payload of `message:new`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Service-assigned id, increasing.
    pub id: u64,
    /// The room it was posted to.
    pub room: String,
    /// The author's user id (raw `sub`).
    pub from: String,
    /// The text.
    pub text: String,
    /// The stream sequence of its `message:new` event.
    pub seq: u64,
}

herald_events! {
    /// A message was posted.
    pub MessageNew => "message:new": NewMessage;
}

/// The payload of `message:new` (the message before it has a sequence).
#[derive(Debug, Clone, Serialize, Deserialize, ts_rs::TS)]
pub struct NewMessage {
    /// Service-assigned id.
    pub id: u64,
    /// The author's user id.
    pub from: String,
    /// The text.
    pub text: String,
}

/// What a client sends with `emit("message:send", …)`.
#[derive(Debug, Deserialize)]
pub struct SendMessage {
    /// The room, e.g. `channel:42`.
    pub room: String,
    /// The text, 1..=2000 characters.
    pub text: String,
}

/// The message store (in memory; a real service would use its database).
#[derive(Debug, Default, Clone)]
pub struct Store {
    inner: Arc<Mutex<StoreInner>>,
}

#[derive(Debug, Default)]
struct StoreInner {
    next_id: u64,
    by_room: HashMap<String, Vec<ChatMessage>>,
}

impl Store {
    /// The messages of `room`, oldest first.
    pub fn messages(&self, room: &str) -> Vec<ChatMessage> {
        self.inner
            .lock()
            .map(|s| s.by_room.get(room).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    fn next_id(&self) -> Result<u64, ServiceError> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| ServiceError::unavailable("store poisoned"))?;
        s.next_id += 1;
        Ok(s.next_id)
    }

    fn insert(&self, m: ChatMessage) -> Result<(), ServiceError> {
        self.inner
            .lock()
            .map_err(|_| ServiceError::unavailable("store poisoned"))?
            .by_room
            .entry(m.room.clone())
            .or_default()
            .push(m);
        Ok(())
    }
}

/// Handles one `message:send`.
pub async fn send(
    publisher: &Publisher,
    store: &Store,
    ctx: RpcContext,
    req: SendMessage,
) -> Result<ChatMessage, ServiceError> {
    let room = Room::parse(&req.room)
        .map_err(|e| ServiceError::new(herald_publish::ErrorCode::InvalidRoom, e.to_string()))?;
    let text = req.text.trim();
    if text.is_empty() || text.chars().count() > 2000 {
        return Err(ServiceError::bad_request(
            "text must be 1..=2000 characters",
        ));
    }
    let id = store.next_id()?;
    let payload = NewMessage {
        id,
        from: ctx.user.as_str().to_owned(),
        text: text.to_owned(),
    };
    // The message id makes a retry of this publish safe.
    let opts = EmitOptions::new()
        .msg_id(format!("chat-message-{id}"))
        .exclude_conn(ctx.conn.clone());
    let ack = publisher
        .send_with::<MessageNew>(&room, &payload, &opts)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "publish failed");
            ServiceError::unavailable("could not deliver the message, try again")
        })?;
    let stored = ChatMessage {
        id,
        room: room.to_string(),
        from: payload.from,
        text: payload.text,
        seq: ack.seq,
    };
    store.insert(stored.clone())?;
    Ok(stored)
}

/// Runs the chat service on `client` in the queue group `chat`.
pub async fn run(
    client: async_nats::Client,
    prefix: &str,
    store: Store,
) -> herald_publish::Result<ServiceHandle> {
    let publisher = Publisher::builder().prefix(prefix).build(client.clone())?;
    rpc_handler(
        client,
        prefix,
        "message:send",
        "chat",
        move |ctx, req: SendMessage| {
            let (publisher, store) = (publisher.clone(), store.clone());
            async move { send(&publisher, &store, ctx, req).await }
        },
    )
    .await
}
