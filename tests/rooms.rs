//! Rooms: joining and leaving, authorization, durable and volatile events,
//! exclusions, interest-based subscriptions and service control.
#![allow(clippy::unwrap_used)]

use async_nats::HeaderMap;
use herald_test_support::{Herald, NatsServer, WsClient, now, token, user_token};
use serde_json::json;
use std::time::Duration;

async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    event: &str,
    body: serde_json::Value,
) -> u64 {
    let mut h = HeaderMap::new();
    h.insert("Herald-Event", event);
    js.publish_with_headers(subject.to_string(), h, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

#[tokio::test]
async fn joined_room_receives_durable_events_with_their_sequence() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let (mut c, welcome) =
        WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &["channel:*"]))
            .await
            .unwrap();
    assert_eq!(welcome["user"], "6");
    // The user's own room is joined at connect.
    let own = c.expect("joined").await.unwrap();
    assert_eq!(own["room"], "user:6");
    assert!(own.get("id").is_none());
    let joined = c.join(1, "channel:42").await.unwrap();
    assert_eq!(joined["id"], 1);
    assert_eq!(joined["room"], "channel:42");
    assert_eq!(joined["seq"], 0);
    assert_eq!(joined["missed"], 0);
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let seq = publish(
        &js,
        "herald.room.channel.42",
        "message:new",
        json!({"text":"hi"}),
    )
    .await;
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        ev,
        json!({"type":"event","room":"channel:42","event":"message:new","seq":seq,"data":{"text":"hi"}})
    );
    // The user room works the same way.
    let seq2 = publish(&js, "herald.room.user.6", "notice", json!(1)).await;
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        (ev["room"].as_str(), ev["seq"].as_u64()),
        (Some("user:6"), Some(seq2))
    );
}

#[tokio::test]
async fn join_is_refused_without_a_matching_claim_and_no_authorizer() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &["channel:1"]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c.send(json!({"type":"join","id":5,"room":"channel:2"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(5), Some("forbidden"))
    );
    let _ = now();
    let _ = token(json!({}));
    let _ = Duration::ZERO;
}
