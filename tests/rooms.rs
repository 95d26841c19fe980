//! Rooms: joining and leaving, authorization, durable and volatile events,
//! exclusions, interest-based subscriptions and service control.
#![allow(clippy::unwrap_used)]

use futures::StreamExt as _;
use herald_test_support::{
    Herald, HeraldBuilder, NatsServer, WsClient, eventually, metric, now, publish, publish_with,
    token, user_token,
};
use serde_json::json;
use std::time::Duration;

async fn seqs(c: &mut WsClient, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.expect("event").await.unwrap()["seq"].as_u64().unwrap());
    }
    out
}

async fn connected(edge: &Herald, t: &str) -> WsClient {
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), t).await.unwrap();
    c.expect("joined").await.unwrap();
    c
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
    // The user's own room is joined at connect, without an id.
    let own = c.expect("joined").await.unwrap();
    assert_eq!(own["room"], "user:6");
    assert!(own.get("id").is_none());
    let joined = c.join(1, "channel:42").await.unwrap();
    assert_eq!(joined["id"], 1);
    assert_eq!(joined["room"], "channel:42");
    assert_eq!(joined["seq"], 0);
    assert_eq!(joined["missed"], 0);
    assert_eq!(joined["recovered"], false);
    assert!(joined["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let seq = publish(&js, "channel:42", "message:new", json!({"text":"hi"})).await;
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        ev,
        json!({"type":"event","room":"channel:42","event":"message:new","seq":seq,"data":{"text":"hi"}})
    );
    let seq2 = publish(&js, "user:6", "notice", json!(1)).await;
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        (ev["room"].as_str(), ev["seq"].as_u64()),
        (Some("user:6"), Some(seq2))
    );
    // A later join reports the room's last sequence.
    let mut c2 = connected(&edge, &user_token("7", &["channel:*"])).await;
    assert_eq!(c2.join(2, "channel:42").await.unwrap()["seq"], seq);
}

#[tokio::test]
async fn every_member_gets_each_event_once_in_order() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut clients = Vec::new();
    for u in ["1", "2", "3"] {
        let mut c = connected(&edge, &user_token(u, &["channel:*"])).await;
        c.join(1, "channel:7").await.unwrap();
        clients.push(c);
    }
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut seqs = Vec::new();
    for i in 0..20 {
        seqs.push(publish(&js, "channel:7", "n", json!(i)).await);
    }
    for c in &mut clients {
        let mut got = Vec::new();
        for _ in 0..20 {
            got.push(c.expect("event").await.unwrap()["seq"].as_u64().unwrap());
        }
        assert_eq!(got, seqs);
        c.silent_for(Duration::from_millis(200)).await.unwrap();
    }
}

#[tokio::test]
async fn leave_stops_delivery_and_leaving_twice_is_not_found() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut c = connected(&edge, &user_token("6", &["channel:*"])).await;
    c.join(1, "channel:1").await.unwrap();
    c.send(json!({"type":"leave","id":2,"room":"channel:1"}))
        .await
        .unwrap();
    assert_eq!(
        c.recv().await.unwrap(),
        json!({"type":"left","id":2,"room":"channel:1"})
    );
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    publish(&js, "channel:1", "n", json!(1)).await;
    c.silent_for(Duration::from_millis(300)).await.unwrap();
    c.send(json!({"type":"leave","id":3,"room":"channel:1"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(3), Some("not_found"))
    );
}

#[tokio::test]
async fn another_users_room_is_never_joinable() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let t = token(json!({"sub":"6","exp":now()+600,"rooms":["*","user:*","user:7"]}));
    let mut c = connected(&edge, &t).await;
    c.send(json!({"type":"join","id":1,"room":"user:7"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(1), Some("forbidden"))
    );
    // The wildcard does allow ordinary rooms.
    c.join(2, "anything:1").await.unwrap();
}

#[tokio::test]
async fn without_a_claim_the_authorizer_decides_and_a_silent_one_means_unavailable() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_AUTHZ__TIMEOUT_MS", "400")
        .start()
        .unwrap();
    let mut c = connected(&edge, &user_token("6", &["channel:1"])).await;
    // Nobody listens on P.authz.join: refused, never allowed.
    c.send(json!({"type":"join","id":1,"room":"program:x"}))
        .await
        .unwrap();
    assert_eq!(c.expect("error").await.unwrap()["code"], "forbidden");

    let svc = nats.client().await.unwrap();
    let mut sub = svc.subscribe("herald.authz.join").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    let authorizer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(m) = sub.next().await {
            let req: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            seen.push(req.clone());
            if seen.len() == 3 {
                return seen;
            }
            let answer = match req["room"].as_str().unwrap() {
                "program:ok" => json!({"allow": true}),
                "program:silent" => continue,
                _ => json!({"allow": false, "reason": "not a member of this program"}),
            };
            svc.publish(m.reply.unwrap(), answer.to_string().into())
                .await
                .unwrap();
        }
        seen
    });
    let ok = c.join(2, "program:ok").await.unwrap();
    assert_eq!(ok["id"], 2);
    c.send(json!({"type":"join","id":3,"room":"program:no"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        e,
        json!({"type":"error","id":3,"code":"forbidden","message":"not a member of this program"})
    );
    c.send(json!({"type":"join","id":4,"room":"program:silent"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(4), Some("unavailable"))
    );
    let seen = authorizer.await.unwrap();
    assert_eq!(seen[0]["user"], "6");
    assert_eq!(seen[0]["room"], "program:ok");
    assert!(seen[0]["conn"].as_str().is_some());
}

#[tokio::test]
async fn the_join_claim_rooms_are_joined_at_connect() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let t = token(json!({"sub":"6","exp":now()+600,"join":["program:abc","team:1"]}));
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    let mut rooms = Vec::new();
    for _ in 0..3 {
        rooms.push(
            c.expect("joined").await.unwrap()["room"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(rooms, ["user:6", "program:abc", "team:1"]);
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    publish(&js, "team:1", "hello", json!({})).await;
    assert_eq!(c.expect("event").await.unwrap()["room"], "team:1");
}

#[tokio::test]
async fn volatile_events_arrive_without_a_sequence() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut c = connected(&edge, &user_token("6", &["channel:*"])).await;
    c.join(1, "channel:1").await.unwrap();
    let nc = nats.client().await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Herald-Event", "typing");
    nc.publish_with_headers("herald.live.room.channel.1", h, r#"{"u":7}"#.into())
        .await
        .unwrap();
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        ev,
        json!({"type":"event","room":"channel:1","event":"typing","data":{"u":7}})
    );
}

#[tokio::test]
async fn exclude_headers_skip_the_sender() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let (mut a, wa) =
        WsClient::connect_welcomed(&edge.ws_url(), &user_token("a@x.io", &["channel:*"]))
            .await
            .unwrap();
    a.expect("joined").await.unwrap();
    let mut a2 = connected(&edge, &user_token("a@x.io", &["channel:*"])).await;
    let mut b = connected(&edge, &user_token("b", &["channel:*"])).await;
    for c in [&mut a, &mut a2, &mut b] {
        c.join(1, "channel:1").await.unwrap();
    }
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let conn = wa["conn"].as_str().unwrap();
    let s1 = publish_with(
        &js,
        "channel:1",
        "e",
        json!(1),
        &[("Herald-Exclude-Conn", conn)],
    )
    .await;
    let s2 = publish_with(
        &js,
        "channel:1",
        "e",
        json!(2),
        &[("Herald-Exclude-User", "=YUB4Lmlv")],
    )
    .await;
    let s3 = publish(&js, "channel:1", "e", json!(3)).await;
    assert_eq!(seqs(&mut a, 1).await, [s3]);
    assert_eq!(seqs(&mut a2, 2).await, [s1, s3]);
    assert_eq!(seqs(&mut b, 3).await, [s1, s2, s3]);
}

#[tokio::test]
async fn users_with_any_id_get_their_private_room() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("auth0|123 é", &[]))
        .await
        .unwrap();
    let own = c.expect("joined").await.unwrap();
    let room = own["room"].as_str().unwrap().to_owned();
    assert!(room.starts_with("user:="));
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let seq = publish(&js, &room, "dm", json!("hi")).await;
    assert_eq!(c.expect("event").await.unwrap()["seq"], seq);
}

#[tokio::test]
async fn an_edge_subscribes_only_to_rooms_its_connections_are_in() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let other = Herald::start(&nats).unwrap();
    assert_eq!(metric(&edge, "herald_nats_subscriptions").await, 0.0);
    let mut a = connected(&edge, &user_token("6", &["channel:*"])).await;
    let mut b = connected(&edge, &user_token("7", &["channel:*"])).await;
    assert_eq!(metric(&edge, "herald_nats_subscriptions").await, 2.0); // two user rooms
    a.join(1, "channel:1").await.unwrap();
    b.join(1, "channel:1").await.unwrap();
    assert_eq!(metric(&edge, "herald_nats_subscriptions").await, 3.0);
    assert_eq!(metric(&edge, "herald_rooms").await, 3.0);
    assert_eq!(metric(&other, "herald_nats_subscriptions").await, 0.0);
    // Traffic for a room nobody here is in never arrives.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    publish(&js, "channel:2", "n", json!(1)).await;
    publish(&js, "channel:1", "n", json!(1)).await;
    a.expect("event").await.unwrap();
    b.expect("event").await.unwrap();
    assert_eq!(
        metric(&edge, "herald_events_in_total{kind=\"durable\"}").await,
        1.0
    );
    assert_eq!(
        metric(&other, "herald_events_in_total{kind=\"durable\"}").await,
        0.0
    );
    a.send(json!({"type":"leave","id":2,"room":"channel:1"}))
        .await
        .unwrap();
    a.expect("left").await.unwrap();
    assert_eq!(metric(&edge, "herald_nats_subscriptions").await, 3.0);
    b.send(json!({"type":"leave","id":2,"room":"channel:1"}))
        .await
        .unwrap();
    b.expect("left").await.unwrap();
    eventually(Duration::from_secs(5), "unsubscribe", || async {
        metric(&edge, "herald_nats_subscriptions").await == 2.0
    })
    .await;
    drop(a);
    drop(b);
    eventually(Duration::from_secs(5), "no subscriptions", || async {
        metric(&edge, "herald_nats_subscriptions").await == 0.0
    })
    .await;
    assert_eq!(metric(&edge, "herald_rooms").await, 0.0);
}

#[tokio::test]
async fn the_room_limit_per_connection_holds() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__MAX_ROOMS_PER_CONN", "3")
        .start()
        .unwrap();
    let mut c = connected(&edge, &user_token("6", &["channel:*"])).await;
    c.join(1, "channel:1").await.unwrap();
    c.join(2, "channel:2").await.unwrap();
    c.send(json!({"type":"join","id":3,"room":"channel:3"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(3), Some("rate_limited"))
    );
}

#[tokio::test]
async fn services_control_a_users_connections() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let other_edge = Herald::start(&nats).unwrap();
    let mut a = connected(&edge, &user_token("6", &[])).await;
    let (mut a2, _) = WsClient::connect_welcomed(&other_edge.ws_url(), &user_token("6", &[]))
        .await
        .unwrap();
    a2.expect("joined").await.unwrap();
    let mut bystander = connected(&edge, &user_token("7", &[])).await;
    let nc = nats.client().await.unwrap();
    nc.publish(
        "herald.ctl.user.6",
        r#"{"op":"join","room":"program:9"}"#.into(),
    )
    .await
    .unwrap();
    for c in [&mut a, &mut a2] {
        let j = c.expect("joined").await.unwrap();
        assert_eq!(j["room"], "program:9");
        assert!(j.get("id").is_none());
    }
    let js = async_nats::jetstream::new(nc.clone());
    publish(&js, "program:9", "update", json!({})).await;
    a.expect("event").await.unwrap();
    a2.expect("event").await.unwrap();
    nc.publish(
        "herald.ctl.user.6",
        r#"{"op":"leave","room":"program:9"}"#.into(),
    )
    .await
    .unwrap();
    assert_eq!(
        a.recv().await.unwrap(),
        json!({"type":"left","room":"program:9"})
    );
    a2.expect("left").await.unwrap();
    nc.publish(
        "herald.ctl.user.6",
        r#"{"op":"disconnect","reason":"banned"}"#.into(),
    )
    .await
    .unwrap();
    for c in [&mut a, &mut a2] {
        let (d, code) = c.expect_close().await.unwrap();
        assert_eq!(code, 4003);
        let d = d.unwrap();
        assert_eq!(
            (d["reason"].as_str(), d["reconnect"].as_bool()),
            (Some("banned"), Some(false))
        );
    }
    bystander.send(json!({"type":"ping"})).await.unwrap();
    assert_eq!(bystander.recv().await.unwrap(), json!({"type":"pong"}));
}

#[tokio::test]
async fn lifecycle_events_are_published_for_services() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let nc = nats.client().await.unwrap();
    let mut sub = nc.subscribe("herald.events.>").await.unwrap();
    herald_publish::round_trip(&nc).await.unwrap();
    let c = connected(&edge, &user_token("6", &[])).await;
    c.close().await;
    // Per-connection events arrive in order; the cluster-wide user.online /
    // user.offline come from the presence writer, on their own schedule.
    let (mut seen, mut user) = (Vec::new(), Vec::new());
    while seen.len() < 4 || user.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap_or_else(|_| panic!("lifecycle events so far: {seen:?} {user:?}"))
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["user"], "6");
        let subject = m.subject.to_string();
        if subject.starts_with("herald.events.user.") {
            user.push(subject);
        } else {
            seen.push(subject);
        }
    }
    assert_eq!(
        seen,
        [
            "herald.events.conn.open",
            "herald.events.room.join",
            "herald.events.room.leave",
            "herald.events.conn.close"
        ]
    );
    assert_eq!(
        user,
        ["herald.events.user.online", "herald.events.user.offline"]
    );
}
