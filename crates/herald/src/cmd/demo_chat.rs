//! The demo chat that `herald dev` runs beside its edge, so the demo page is a
//! working chat room out of the box.
//!
//! It plays the part an app's own service plays in production: it answers the
//! clients' `emit("message:send", {room, text, cid})` on `P.rpc.message:send`
//! (through [`herald_publish::rpc_handler`]), checks the message, and publishes it
//! durably to the room as `message:new`, so a client that reconnects gets what it
//! missed. The client's `cid` becomes the JetStream message id: a send retried after
//! a dropped connection is stored once. Each `@name` in the text also sends a
//! `mention` to that user's private room (`user:<name>`), which the demo page shows
//! in its notifications panel.
//!
//! It also provides `GET /dev/token?user=NAME`, which signs a token with the dev
//! secret so the demo page can sign in as anyone. Only `herald dev` mounts it.

use super::token::{TokenArgs, mint};
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_publish::{
    EmitOptions, ErrorCode, Publisher, Room, RpcContext, ServiceError, ServiceHandle, UserId,
    rpc_handler,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The longest message, in characters.
const MAX_TEXT: usize = 2000;
/// At most this many users are notified of one message.
const MAX_MENTIONS: usize = 5;
/// Lifetime of a `/dev/token` token: short, so the page's token provider is used.
const DEV_TOKEN_TTL_SECS: u64 = 3600;

/// What the page sends with `emit("message:send", …)`.
#[derive(Debug, Deserialize)]
pub struct SendMessage {
    room: String,
    text: String,
    /// The client's id for this message: `[A-Za-z0-9_-]{1,64}`.
    #[serde(default)]
    cid: Option<String>,
}

/// The payload of `message:new`.
#[derive(Debug, Serialize)]
struct NewMessage<'a> {
    from: &'a str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a str>,
    /// Milliseconds since the Unix epoch.
    at: u64,
}

/// The payload of `mention`.
#[derive(Debug, Serialize)]
struct Mention<'a> {
    from: &'a str,
    room: &'a str,
    text: &'a str,
    seq: u64,
}

/// The reply to `message:send`.
#[derive(Debug, Serialize)]
struct Posted {
    seq: u64,
    duplicate: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn valid_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The distinct `@name`s in `text`, other than `me`, at most [`MAX_MENTIONS`].
fn mentions(text: &str, me: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for word in text.split(|c: char| c.is_whitespace()) {
        let Some(rest) = word.strip_prefix('@') else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        if valid_name(&name, 64) && name != me {
            out.insert(name);
        }
    }
    out.into_iter().take(MAX_MENTIONS).collect()
}

/// Checks and publishes one message; returns its sequence.
async fn send(
    publisher: &Publisher,
    ctx: RpcContext,
    req: SendMessage,
) -> Result<Posted, ServiceError> {
    let room = Room::parse(&req.room)
        .map_err(|e| ServiceError::new(ErrorCode::InvalidRoom, e.to_string()))?;
    if room.kind() != "channel" {
        return Err(ServiceError::forbidden(
            "the demo chat only posts to channel:* rooms",
        ));
    }
    let text = req.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return Err(ServiceError::bad_request(format!(
            "a message is 1 to {MAX_TEXT} characters"
        )));
    }
    if let Some(cid) = &req.cid
        && !valid_name(cid, 64)
    {
        return Err(ServiceError::bad_request(
            "cid must be 1 to 64 characters of [A-Za-z0-9_-]",
        ));
    }
    let from = ctx.user.as_str();
    let mut opts = EmitOptions::new();
    if let Some(cid) = &req.cid {
        opts = opts.msg_id(format!("demo-chat-{}-{cid}", ctx.user.encoded()));
    }
    let payload = NewMessage {
        from,
        text,
        cid: req.cid.as_deref(),
        at: now_ms(),
    };
    let ack = publisher
        .emit_with(&room, "message:new", &payload, &opts)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "demo chat: publish failed");
            ServiceError::unavailable("the message could not be stored, try again")
        })?;
    if !ack.duplicate {
        for name in mentions(text, from) {
            let Ok(user) = UserId::new(name) else {
                continue;
            };
            let m = Mention {
                from,
                room: room.as_str(),
                text,
                seq: ack.seq,
            };
            if let Err(e) = publisher.emit_to_user(&user, "mention", &m).await {
                tracing::warn!(error = %e, "demo chat: mention not delivered");
            }
        }
    }
    Ok(Posted {
        seq: ack.seq,
        duplicate: ack.duplicate,
    })
}

/// Starts answering `message:send` on `client`.
pub async fn start(client: async_nats::Client, prefix: &str) -> anyhow::Result<ServiceHandle> {
    let publisher = Publisher::builder().prefix(prefix).build(client.clone())?;
    let handle = rpc_handler(
        client,
        prefix,
        "message:send",
        "herald-dev-chat",
        move |ctx: RpcContext, req: SendMessage| {
            let publisher = publisher.clone();
            async move { send(&publisher, ctx, req).await }
        },
    )
    .await?;
    Ok(handle)
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    user: String,
}

/// `GET /dev/token?user=NAME`: a token for NAME that may join and publish to
/// `channel:*`, signed with the dev secret.
pub fn token_routes(secret: String) -> axum::Router {
    axum::Router::new().route(
        "/dev/token",
        get(move |Query(q): Query<TokenQuery>| {
            let secret = secret.clone();
            async move { dev_token(&secret, &q.user) }
        }),
    )
}

fn dev_token(secret: &str, user: &str) -> Response {
    if !valid_name(user, 32) {
        return (
            StatusCode::BAD_REQUEST,
            "user: 1 to 32 characters of [A-Za-z0-9_-]\n",
        )
            .into_response();
    }
    let args = TokenArgs {
        sub: user.to_owned(),
        rooms: vec!["channel:*".into()],
        join: vec![],
        publish: vec!["channel:*".into()],
        ttl: DEV_TOKEN_TTL_SECS,
    };
    match mint(secret, &args) {
        Ok(token) => axum::Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_distinct_valid_names_other_than_the_sender() {
        assert_eq!(
            mentions("hi @bob, @carol and @bob! @alice @ @a.b mail@x", "alice"),
            vec!["a".to_owned(), "bob".to_owned(), "carol".to_owned()]
        );
        assert_eq!(mentions("@a @b @c @d @e @f @g", "z").len(), MAX_MENTIONS);
    }

    #[test]
    fn dev_token_refuses_names_that_are_not_simple() {
        assert_eq!(dev_token("s", "a b").status(), StatusCode::BAD_REQUEST);
        assert_eq!(dev_token("s", "").status(), StatusCode::BAD_REQUEST);
        assert_eq!(dev_token("s", "bob").status(), StatusCode::OK);
    }
}
