//! The producer SDK (`herald-publish`) against real NATS and herald processes:
//! acknowledged, idempotent, volatile and detached publishes, exclusions, control
//! operations, and the RPC and authorizer helpers.
#![allow(clippy::unwrap_used)]

use herald_protocol::{Room, UserId};
use herald_publish::{
    EmitOptions, ErrorKind, Publisher, RpcContext, ServiceError, Verdict, authorizer,
    herald_events, rpc_handler,
};
use herald_test_support::{Herald, HeraldBuilder, NatsServer, WsClient, user_token};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

async fn connected(edge: &Herald, sub: &str, rooms: &[&str]) -> WsClient {
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token(sub, rooms))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c
}

fn room(s: &str) -> Room {
    Room::parse(s).unwrap()
}

struct Setup {
    nats: NatsServer,
    edge: Herald,
    publisher: Publisher,
}

async fn setup() -> Setup {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats).start().unwrap();
    let publisher = Publisher::connect(&nats.url()).await.unwrap();
    Setup {
        nats,
        edge,
        publisher,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MessagePayload {
    id: u64,
    text: String,
}

herald_events! {
    /// A message was posted.
    MessageNew => "message:new": MessagePayload;
}

#[tokio::test]
async fn emit_reaches_a_joined_client_with_its_sequence() {
    let s = setup().await;
    let mut c = connected(&s.edge, "6", &["channel:*"]).await;
    c.join(1, "channel:42").await.unwrap();
    let seq = s
        .publisher
        .emit(&room("channel:42"), "message:new", &json!({"text":"hi"}))
        .await
        .unwrap();
    assert_eq!(
        c.expect("event").await.unwrap(),
        json!({"type":"event","room":"channel:42","event":"message:new","seq":seq,"data":{"text":"hi"}})
    );
    // Typed: the catalog gives the name and the payload type.
    let seq2 = s
        .publisher
        .send::<MessageNew>(
            &room("channel:42"),
            &MessagePayload {
                id: 1,
                text: "typed".into(),
            },
        )
        .await
        .unwrap();
    assert!(seq2 > seq);
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        (ev["event"].as_str(), ev["seq"].as_u64(), &ev["data"]),
        (
            Some("message:new"),
            Some(seq2),
            &json!({"id":1,"text":"typed"})
        )
    );
}

#[tokio::test]
async fn a_retried_emit_with_the_same_msg_id_is_delivered_once() {
    let s = setup().await;
    let mut c = connected(&s.edge, "6", &["channel:*"]).await;
    c.join(1, "channel:1").await.unwrap();
    let r = room("channel:1");
    let opts = EmitOptions::new().msg_id("order-77-created");
    let first = s
        .publisher
        .emit_with(&r, "order:created", &json!({"id":77}), &opts)
        .await
        .unwrap();
    let again = s
        .publisher
        .emit_with(&r, "order:created", &json!({"id":77}), &opts)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.seq, again.seq);
    assert_eq!(again.msg_id, "order-77-created");
    assert_eq!(
        c.expect("event").await.unwrap()["seq"].as_u64(),
        Some(first.seq)
    );
    c.silent_for(Duration::from_millis(300)).await.unwrap();
    // Without a key, each call is a new event.
    let a = s.publisher.emit(&r, "n", &1).await.unwrap();
    let b = s.publisher.emit(&r, "n", &1).await.unwrap();
    assert_eq!(b, a + 1);
}

#[tokio::test]
async fn volatile_arrives_without_seq_and_exclusions_skip() {
    let s = setup().await;
    let mut a = connected(&s.edge, "6", &["channel:*"]).await;
    let mut b = connected(&s.edge, "7", &["channel:*"]).await;
    a.join(1, "channel:5").await.unwrap();
    b.join(1, "channel:5").await.unwrap();
    let r = room("channel:5");
    s.publisher
        .volatile(&r, "typing", &json!({"user":"6"}))
        .await
        .unwrap();
    s.publisher.flush().await.unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.expect("event").await.unwrap(),
            json!({"type":"event","room":"channel:5","event":"typing","data":{"user":"6"}})
        );
    }
    // Durable, excluding user 6: only 7 gets it.
    let six = UserId::new("6").unwrap();
    let seq = s
        .publisher
        .emit_with(
            &r,
            "message:new",
            &json!({}),
            &EmitOptions::new().exclude_user(&six),
        )
        .await
        .unwrap()
        .seq;
    assert_eq!(b.expect("event").await.unwrap()["seq"].as_u64(), Some(seq));
    a.silent_for(Duration::from_millis(300)).await.unwrap();
    // Volatile, excluding user 7.
    let seven = UserId::new("7").unwrap();
    s.publisher
        .volatile_with(
            &r,
            "typing",
            &json!(null),
            &EmitOptions::new().exclude_user(&seven),
        )
        .await
        .unwrap();
    s.publisher.flush().await.unwrap();
    assert_eq!(a.expect("event").await.unwrap()["data"], json!(null));
    b.silent_for(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn emit_to_user_reaches_every_connection_of_the_user_with_an_encoded_id() {
    let s = setup().await;
    let mut a1 = connected(&s.edge, "a@b.io", &[]).await;
    let mut a2 = connected(&s.edge, "a@b.io", &[]).await;
    let mut other = connected(&s.edge, "6", &[]).await;
    let user = UserId::new("a@b.io").unwrap();
    let seq = s
        .publisher
        .emit_to_user(&user, "inbox:count", &json!({"unread":3}))
        .await
        .unwrap();
    for c in [&mut a1, &mut a2] {
        let ev = c.expect("event").await.unwrap();
        assert_eq!(
            (ev["room"].as_str(), ev["seq"].as_u64()),
            (Some("user:=YUBiLmlv"), Some(seq))
        );
    }
    other.silent_for(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn detached_emits_never_block_and_are_counted() {
    let s = setup().await;
    let mut c = connected(&s.edge, "6", &["channel:*"]).await;
    c.join(1, "channel:9").await.unwrap();
    for i in 0..5 {
        s.publisher.emit_detached(&room("channel:9"), "n", &i);
    }
    s.publisher.drain_detached().await;
    assert_eq!(s.publisher.detached_stats().ok, 5);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.expect("event").await.unwrap()["data"].as_u64().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    // A publisher whose events no stream stores: failures are counted, not raised.
    let lost = Publisher::builder()
        .prefix("nostream")
        .attempts(1)
        .ack_timeout(Duration::from_millis(500))
        .build(s.nats.client().await.unwrap())
        .unwrap();
    lost.emit_detached(&room("channel:9"), "n", &1);
    lost.drain_detached().await;
    assert_eq!(lost.detached_stats().failed, 1);
    let e = lost.emit(&room("channel:9"), "n", &1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoStream, "{e}");
    // Bad event names are refused before anything is sent.
    let e = s
        .publisher
        .emit(&room("channel:9"), "bad event", &1)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidEvent);
}

#[derive(Deserialize)]
struct SendReq {
    text: String,
}

#[tokio::test]
async fn rpc_handler_answers_emit_and_maps_errors_to_codes() {
    let s = setup().await;
    let client = s.nats.client().await.unwrap();
    let publisher = s.publisher.clone();
    rpc_handler(
        client,
        "herald",
        "message:send",
        "messages",
        move |ctx: RpcContext, req: SendReq| {
            let publisher = publisher.clone();
            async move {
                match req.text.as_str() {
                    "" => return Err(ServiceError::bad_request("empty message")),
                    "secret" => return Err(ServiceError::forbidden("not in this channel")),
                    _ => {}
                }
                let seq = publisher
                    .emit_with(
                        &Room::parse("channel:1").unwrap(),
                        "message:new",
                        &json!({"text": req.text, "from": ctx.user.as_str()}),
                        &EmitOptions::new().exclude_conn(ctx.conn.clone()),
                    )
                    .await
                    .map_err(|e| ServiceError::unavailable(e.to_string()))?
                    .seq;
                Ok(json!({"stored": true, "seq": seq, "user": ctx.user.as_str()}))
            }
        },
    )
    .await
    .unwrap();
    let mut sender = connected(&s.edge, "a@b.io", &["channel:*"]).await;
    let mut reader = connected(&s.edge, "7", &["channel:*"]).await;
    sender.join(1, "channel:1").await.unwrap();
    reader.join(1, "channel:1").await.unwrap();
    sender
        .send(json!({"type":"emit","id":2,"event":"message:send","data":{"text":"hi"}}))
        .await
        .unwrap();
    let r = sender.expect("reply").await.unwrap();
    assert_eq!(r["id"], 2);
    assert_eq!(r["data"]["stored"], true);
    assert_eq!(r["data"]["user"], "a@b.io");
    let ev = reader.expect("event").await.unwrap();
    assert_eq!(ev["seq"], r["data"]["seq"]);
    assert_eq!(ev["data"], json!({"text":"hi","from":"a@b.io"}));
    // The sender's own connection was excluded.
    sender.silent_for(Duration::from_millis(300)).await.unwrap();
    for (id, data, code) in [
        (3, json!({"text":"secret"}), "forbidden"),
        (4, json!({"text":""}), "bad_request"),
        (5, json!({"nope":1}), "bad_request"),
    ] {
        sender
            .send(json!({"type":"emit","id":id,"event":"message:send","data":data}))
            .await
            .unwrap();
        let e = sender.expect("error").await.unwrap();
        assert_eq!(
            (e["id"].as_i64(), e["code"].as_str()),
            (Some(id), Some(code))
        );
    }
    let e = {
        sender
            .send(json!({"type":"emit","id":6,"event":"message:send","data":{"text":"secret"}}))
            .await
            .unwrap();
        sender.expect("error").await.unwrap()
    };
    assert_eq!(e["message"], "not in this channel");
}

#[tokio::test]
async fn authorizer_allows_and_denies_joins() {
    let s = setup().await;
    authorizer(
        s.nats.client().await.unwrap(),
        "herald",
        "authz",
        |req| async move {
            Ok(match req.room.id() {
                "1" if req.user.as_str() == "6" => Verdict::Allow,
                "2" => return Err(ServiceError::unavailable("membership store down")),
                _ => Verdict::deny("not a member"),
            })
        },
    )
    .await
    .unwrap();
    let mut c = connected(&s.edge, "6", &[]).await;
    assert_eq!(c.join(1, "dm:1").await.unwrap()["room"], "dm:1");
    for (id, room, msg) in [
        (2, "dm:3", "not a member"),
        (3, "dm:2", "membership store down"),
    ] {
        c.send(json!({"type":"join","id":id,"room":room}))
            .await
            .unwrap();
        let e = c.expect("error").await.unwrap();
        assert_eq!(
            (e["id"].as_i64(), e["code"].as_str(), e["message"].as_str()),
            (Some(id), Some("forbidden"), Some(msg))
        );
    }
    let mut other = connected(&s.edge, "7", &[]).await;
    other
        .send(json!({"type":"join","id":1,"room":"dm:1"}))
        .await
        .unwrap();
    assert_eq!(other.expect("error").await.unwrap()["code"], "forbidden");
}

#[tokio::test]
async fn control_joins_removes_and_disconnects_a_user() {
    let s = setup().await;
    let mut a = connected(&s.edge, "a@b.io", &[]).await;
    let mut bystander = connected(&s.edge, "7", &[]).await;
    let user = UserId::new("a@b.io").unwrap();
    let r = room("program:9");
    s.publisher.join_user_to(&user, &r).await.unwrap();
    let j = a.expect("joined").await.unwrap();
    assert_eq!(j["room"], "program:9");
    let seq = s.publisher.emit(&r, "update", &json!({})).await.unwrap();
    assert_eq!(a.expect("event").await.unwrap()["seq"].as_u64(), Some(seq));
    s.publisher.remove_user_from(&user, &r).await.unwrap();
    assert_eq!(
        a.recv().await.unwrap(),
        json!({"type":"left","room":"program:9"})
    );
    s.publisher.emit(&r, "update", &json!({})).await.unwrap();
    a.silent_for(Duration::from_millis(300)).await.unwrap();
    s.publisher.disconnect_user(&user, "banned").await.unwrap();
    let (d, code) = a.expect_close().await.unwrap();
    assert_eq!(code, 4003);
    let d = d.unwrap();
    assert_eq!(
        (d["reason"].as_str(), d["reconnect"].as_bool()),
        (Some("banned"), Some(false))
    );
    bystander.send(json!({"type":"ping"})).await.unwrap();
    assert_eq!(bystander.recv().await.unwrap(), json!({"type":"pong"}));
}
