//! Client requests: ping, emit, publish, refresh, and what bad input gets.
#![allow(clippy::unwrap_used)]

use futures::StreamExt as _;
use herald_test_support::{Herald, HeraldBuilder, NatsServer, WsClient, now, token, user_token};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn connected(edge: &Herald, t: &str) -> WsClient {
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), t).await.unwrap();
    c.expect("joined").await.unwrap(); // the user's own room
    c
}

#[tokio::test]
async fn ping_gets_pong() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut c = connected(&edge, &user_token("6", &[])).await;
    c.send(json!({"type":"ping"})).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), json!({"type":"pong"}));
    c.send(json!({"type":"ping","id":9})).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), json!({"type":"pong","id":9}));
}

#[tokio::test]
async fn emit_relays_the_services_reply_with_user_and_connection_headers() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let svc = nats.client().await.unwrap();
    let mut sub = svc.subscribe("herald.rpc.message:send").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    let (mut c, welcome) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("a@b.io", &[]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c.send(json!({"type":"emit","id":3,"event":"message:send","data":{"text":"hi"}}))
        .await
        .unwrap();
    let req = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    let h = req.headers.clone().unwrap();
    assert_eq!(h.get("Herald-User").unwrap().as_str(), "=YUBiLmlv");
    assert_eq!(
        h.get("Herald-Conn").unwrap().as_str(),
        welcome["conn"].as_str().unwrap()
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&req.payload).unwrap(),
        json!({"text":"hi"})
    );
    svc.publish(req.reply.unwrap(), r#"{"id":77,"stored":true}"#.into())
        .await
        .unwrap();
    assert_eq!(
        c.recv().await.unwrap(),
        json!({"type":"reply","id":3,"data":{"id":77,"stored":true}})
    );
}

#[tokio::test]
async fn emit_without_a_service_gets_no_handler_and_a_slow_one_timeout() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_RPC__TIMEOUT_MS", "300")
        .start()
        .unwrap();
    let mut c = connected(&edge, &user_token("6", &[])).await;
    c.send(json!({"type":"emit","id":1,"event":"nobody:home","data":{}}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(1), Some("no_handler"))
    );
    let svc = nats.client().await.unwrap();
    let _silent = svc.subscribe("herald.rpc.slow").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    c.send(json!({"type":"emit","id":2,"event":"slow"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(2), Some("timeout"))
    );
}

#[tokio::test]
async fn a_service_error_is_relayed_with_its_code() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let svc = nats.client().await.unwrap();
    let mut sub = svc.subscribe("herald.rpc.delete").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    let mut c = connected(&edge, &user_token("6", &[])).await;
    c.send(json!({"type":"emit","id":4,"event":"delete","data":{"id":1}}))
        .await
        .unwrap();
    let req = sub.next().await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Herald-Error", "forbidden");
    svc.publish_with_headers(
        req.reply.unwrap(),
        h,
        r#"{"message":"not your message"}"#.into(),
    )
    .await
    .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        e,
        json!({"type":"error","id":4,"code":"forbidden","message":"not your message"})
    );
}

#[tokio::test]
async fn concurrent_emits_are_answered_by_id() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let svc = nats.client().await.unwrap();
    let mut sub = svc.subscribe("herald.rpc.echo").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    let mut c = connected(&edge, &user_token("6", &[])).await;
    for id in 1..=3 {
        c.send(json!({"type":"emit","id":id,"event":"echo","data":id}))
            .await
            .unwrap();
    }
    let mut reqs = Vec::new();
    for _ in 0..3 {
        reqs.push(sub.next().await.unwrap());
    }
    // Answer in reverse order: each reply still finds its request.
    for r in reqs.into_iter().rev() {
        svc.publish(r.reply.unwrap(), r.payload).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = c.expect("reply").await.unwrap();
        assert_eq!(r["id"], r["data"]);
        got.push(r["id"].as_i64().unwrap());
    }
    got.sort();
    assert_eq!(got, [1, 2, 3]);
}

#[tokio::test]
async fn publish_reaches_the_room_but_not_the_sender_and_needs_the_claim() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let t = token(json!({"sub":"6","exp":now()+600,"rooms":["channel:*"],"publish":["channel:*"]}));
    let mut sender = connected(&edge, &t).await;
    let mut other = connected(&edge, &user_token("7", &["channel:*"])).await;
    sender.join(1, "channel:1").await.unwrap();
    other.join(1, "channel:1").await.unwrap();
    sender
        .send(
            json!({"type":"publish","id":4,"room":"channel:1","event":"typing","data":{"on":true}}),
        )
        .await
        .unwrap();
    assert_eq!(sender.recv().await.unwrap(), json!({"type":"reply","id":4}));
    let ev = other.expect("event").await.unwrap();
    assert_eq!(
        ev,
        json!({"type":"event","room":"channel:1","event":"typing","data":{"on":true}})
    );
    sender.silent_for(Duration::from_millis(300)).await.unwrap();
    other
        .send(json!({"type":"publish","id":5,"room":"channel:1","event":"typing","data":{}}))
        .await
        .unwrap();
    let e = other.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(5), Some("forbidden"))
    );
}

#[tokio::test]
async fn refresh_replaces_the_token_of_the_same_user_only() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_AUTH__LEEWAY_SECS", "0")
        .start()
        .unwrap();
    let mut c = connected(&edge, &token(json!({"sub":"6","exp":now()+2}))).await;
    c.send(json!({"type":"refresh","id":7,"token": token(json!({"sub":"6","exp":now()+600}))}))
        .await
        .unwrap();
    assert_eq!(c.recv().await.unwrap(), json!({"type":"reply","id":7}));
    c.send(json!({"type":"refresh","id":8,"token": token(json!({"sub":"7","exp":now()+600}))}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(8), Some("forbidden"))
    );
    c.send(json!({"type":"refresh","id":9,"token":"garbage"}))
        .await
        .unwrap();
    assert_eq!(c.expect("error").await.unwrap()["code"], "forbidden");
    // The old token's expiry has passed; the refreshed session lives on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.send(json!({"type":"ping","id":1})).await.unwrap();
    assert_eq!(c.expect("pong").await.unwrap()["id"], 1);
}

#[tokio::test]
async fn bad_frames_get_errors_and_disturb_nobody() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut bystander = connected(&edge, &user_token("7", &["channel:*"])).await;
    bystander.join(1, "channel:1").await.unwrap();
    let mut c = connected(&edge, &user_token("6", &["channel:*", "*"])).await;
    let cases: Vec<(String, Option<i64>, &str)> = vec![
        ("not json".into(), None, "bad_request"),
        ("[1,2]".into(), None, "bad_request"),
        (r#"{"type":"nope","id":1}"#.into(), Some(1), "bad_request"),
        (r#"{"type":"join","id":2}"#.into(), Some(2), "bad_request"),
        (r#"{"id":3}"#.into(), Some(3), "bad_request"),
        (
            r#"{"type":"join","id":4,"room":["x"]}"#.into(),
            Some(4),
            "bad_request",
        ),
        (
            r#"{"type":"emit","id":5,"event":"a b"}"#.into(),
            Some(5),
            "bad_request",
        ),
        (
            r#"{"type":"emit","id":6,"event":"x","data":1e999999}"#.into(),
            Some(6),
            "bad_request",
        ),
        (
            format!(
                r#"{{"type":"emit","id":7,"event":"x","data":{}{}}}"#,
                "[".repeat(100),
                "]".repeat(100)
            ),
            Some(7),
            "bad_request",
        ),
        (r#"{"type":"auth","token":"x"}"#.into(), None, "bad_request"),
        (
            r#"{"type":"leave","id":8,"room":"channel:9"}"#.into(),
            Some(8),
            "not_found",
        ),
    ];
    for (frame, id, code) in &cases {
        c.send_text(frame).await.unwrap();
        let e = c.expect("error").await.unwrap();
        assert_eq!(
            (e["id"].as_i64(), e["code"].as_str()),
            (*id, Some(*code)),
            "{frame}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for room in [
        "channel:*",
        "channel:>",
        "channel:4.2",
        "chan.nel:1",
        "*:1",
        "channel",
        "channel:",
        ":1",
        "channel:a b",
        "Channel:1",
        "channel:ａ",
        "channel:a\u{0000}",
        &format!("channel:{}", "x".repeat(129)),
    ] {
        c.send(json!({"type":"join","id":10,"room":room}))
            .await
            .unwrap();
        let e = c.expect("error").await.unwrap();
        assert_eq!(e["code"], "invalid_room", "{room:?}");
    }
    c.send_raw(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(c.expect("error").await.unwrap()["code"], "bad_request");
    // Still usable, and the bystander saw nothing but its own traffic.
    c.send(json!({"type":"ping","id":11})).await.unwrap();
    assert_eq!(c.expect("pong").await.unwrap()["id"], 11);
    bystander.send(json!({"type":"ping","id":2})).await.unwrap();
    assert_eq!(
        bystander.recv().await.unwrap(),
        json!({"type":"pong","id":2})
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_1009_and_an_oversized_payload_gets_too_large() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__MAX_FRAME_BYTES", "4096")
        .env("HERALD_LIMITS__MAX_PAYLOAD_BYTES", "100")
        .start()
        .unwrap();
    let mut c = connected(&edge, &user_token("6", &[])).await;
    c.send(json!({"type":"emit","id":1,"event":"x","data":"y".repeat(200)}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(1), Some("too_large"))
    );
    c.send(json!({"type":"emit","id":2,"event":"x","data":"y".repeat(10_000)}))
        .await
        .unwrap();
    let (d, code) = c.expect_close().await.unwrap();
    assert_eq!(code, 1009);
    assert_eq!(d.unwrap()["code"], 1009);
}

#[tokio::test]
async fn a_request_flood_is_rate_limited_then_closed_4029() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__REQUESTS_PER_SEC", "5")
        .env("HERALD_LIMITS__REQUEST_BURST", "5")
        .env("HERALD_LIMITS__RATE_LIMIT_CLOSE_AFTER", "20")
        .start()
        .unwrap();
    let mut c = connected(&edge, &user_token("6", &[])).await;
    let mut other = connected(&edge, &user_token("7", &[])).await;
    for i in 0..40 {
        if c.send(json!({"type":"ping","id":i})).await.is_err() {
            break;
        }
    }
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match c.recv().await {
            Ok(v) if v["type"] == "pong" => pongs += 1,
            Ok(v) if v["type"] == "error" => {
                assert_eq!(v["code"], "rate_limited");
                limited += 1;
            }
            Ok(v) if v["type"] == "disconnect" => assert_eq!(v["code"], 4029),
            Ok(v) => panic!("unexpected {v}"),
            Err(_) => break c.closed.clone().flatten().map(|f| u16::from(f.code)),
        }
    };
    assert_eq!(code, Some(4029));
    assert!(
        (5..=7).contains(&pongs),
        "burst of 5 (+refill) expected, got {pongs}"
    );
    assert!(limited >= 1);
    other.send(json!({"type":"ping","id":1})).await.unwrap();
    assert_eq!(other.expect("pong").await.unwrap()["id"], 1);
}

#[tokio::test]
async fn keepalive_pings_hold_an_idle_but_live_client_and_a_dead_one_is_closed() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_TIMEOUTS__PING_MS", "1000")
        .env("HERALD_TIMEOUTS__IDLE_TIMEOUT_MS", "2500")
        .start()
        .unwrap();
    // A client that keeps reading answers the edge's WebSocket pings: it stays.
    let mut live = connected(&edge, &user_token("6", &[])).await;
    live.silent_for(Duration::from_secs(4)).await.unwrap();
    live.send(json!({"type":"ping","id":1})).await.unwrap();
    assert_eq!(live.expect("pong").await.unwrap()["id"], 1);
    // A client that neither reads nor writes is closed as idle.
    let mut dead = connected(&edge, &user_token("7", &[])).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (d, code) = dead.expect_close().await.unwrap();
    assert_eq!(code, 1001);
    assert_eq!(d.unwrap()["reconnect"], true);
}
