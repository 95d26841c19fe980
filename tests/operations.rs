//! Operating Herald: health and metrics endpoints, NATS outages, slow
//! consumers, the SIGTERM drain, `herald setup`/`publish`/`dev`, and start-up
//! errors that tell the user what to do.
#![allow(clippy::unwrap_used)]

use herald_test_support::{
    Herald, HeraldBuilder, NatsServer, SECRET, WsClient, eventually, herald_bin, metric, publish,
    user_token,
};
use serde_json::json;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn herald(nats_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(herald_bin())
        .args(args)
        .env_remove("HERALD_CONFIG")
        .env("HERALD_NATS__URL", nats_url)
        .env("HERALD_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap()
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints_answer() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    assert_eq!(edge.get("/healthz").await.unwrap().0, 200);
    assert_eq!(edge.get("/readyz").await.unwrap().0, 200);
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &[]))
        .await
        .unwrap();
    // Once the user's room is joined, its subscription exists.
    c.expect("joined").await.unwrap();
    let (status, body) = edge.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "herald_connections 1",
        "herald_rooms 1",
        "herald_nats_subscriptions 1",
        "herald_events_in_total",
        "herald_events_out_total",
        "herald_slow_consumer_disconnects_total",
        "herald_auth_failures_total",
        "herald_rpc_latency_seconds_bucket",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
}

#[tokio::test]
async fn a_nats_restart_is_invisible_to_clients_and_readyz_follows_it() {
    let mut nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &["channel:*"]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c.join(1, "channel:1").await.unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let s1 = publish(&js, "channel:1", "m", json!(1)).await;
    assert_eq!(c.expect("event").await.unwrap()["seq"], s1);
    nats.stop();
    eventually(Duration::from_secs(10), "readyz 503", || async {
        edge.get("/readyz").await.unwrap().0 == 503
    })
    .await;
    // The client is kept meanwhile.
    c.send(json!({"type":"ping","id":1})).await.unwrap();
    assert_eq!(c.expect("pong").await.unwrap()["id"], 1);
    nats.restart().unwrap();
    eventually(Duration::from_secs(20), "readyz 200", || async {
        edge.get("/readyz").await.unwrap().0 == 200
    })
    .await;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let s2 = publish(&js, "channel:1", "m", json!(2)).await;
    assert_eq!(c.expect("event").await.unwrap()["seq"], s2);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4008_and_others_get_everything() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__OUTBOUND_QUEUE", "32")
        .start()
        .unwrap();
    let t = user_token("6", &["channel:*"]);
    // A small receive buffer: the edge's writer then waits on the socket
    // frame by frame once the client reads again, while events keep coming.
    let mut slow = WsClient::connect_small_buffer(&edge.ws_url(), &t, 16 * 1024)
        .await
        .unwrap();
    slow.expect("welcome").await.unwrap();
    slow.expect("joined").await.unwrap();
    slow.join(1, "channel:1").await.unwrap();
    let (mut fast, _) =
        WsClient::connect_welcomed(&edge.ws_url(), &user_token("7", &["channel:*"]))
            .await
            .unwrap();
    fast.expect("joined").await.unwrap();
    fast.join(1, "channel:1").await.unwrap();
    // The slow client stops reading; 64 KiB events fill its socket, then its
    // queue. It starts reading again while events are still being published.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let big = "x".repeat(64 * 1024);
    let n = 600;
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            fast.expect("event").await.unwrap();
        }
        fast
    });
    // Acks are awaited in windows, so events arrive faster than one round trip each.
    let publisher = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..n {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Herald-Event", "m");
            let body = json!({"i": i, "pad": big}).to_string();
            acks.push(
                js.publish_with_headers("herald.room.channel.1", h, body.into())
                    .await
                    .unwrap(),
            );
            if acks.len() == 8 {
                for a in acks.drain(..) {
                    a.await.unwrap();
                }
            }
        }
        for a in acks {
            a.await.unwrap();
        }
    });
    eventually(Duration::from_secs(30), "4008 counted", || async {
        metric(&edge, "herald_slow_consumer_disconnects_total").await == 1.0
    })
    .await;
    assert!(
        !publisher.is_finished(),
        "the publisher must outlast the stall"
    );
    // What the slow client got before the close must be a gapless prefix:
    // its cursor is the last event it saw, and it resumes from there.
    let mut got = Vec::new();
    let mut disconnect = None;
    loop {
        match slow.recv().await {
            Ok(v) if v["type"] == "event" => got.push(v["data"]["i"].as_u64().unwrap()),
            Ok(v) if v["type"] == "disconnect" => disconnect = Some(v),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(slow.close_code(), Some(4008));
    assert_eq!(disconnect.unwrap()["reconnect"], true);
    assert!(!got.is_empty());
    let expected: Vec<u64> = (0..got.len() as u64).collect();
    assert_eq!(got, expected, "the slow client saw a hole before its 4008");
    publisher.await.unwrap();
    let _fast = reader.await.unwrap();
}

/// Clients in two rooms stop reading while one room's catch-up is being
/// queued for them and events keep arriving in the other: a push fails, the
/// edge closes with 4008, and nothing queued after that failure may reach the
/// client, although the queue drains again once the client reads. Whether a
/// later push lands in the queue before the connection's tasks see the kill
/// is a race, so several clients run the scenario at once.
#[tokio::test]
async fn nothing_after_a_failed_push_reaches_a_slow_consumer() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__OUTBOUND_QUEUE", "16")
        .env("HERALD_CATCHUP__MAX_EVENTS", "1000")
        .start()
        .unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let big = "x".repeat(64 * 1024);
    for i in 0..300 {
        publish(&js, "channel:a", "m", json!({"i": i, "pad": big})).await;
    }
    let clients = 6;
    let mut slow = Vec::new();
    for u in 0..clients {
        let t = user_token(&format!("s{u}"), &["channel:*"]);
        let mut c = WsClient::connect_small_buffer(&edge.ws_url(), &t, 16 * 1024)
            .await
            .unwrap();
        c.expect("welcome").await.unwrap();
        c.expect("joined").await.unwrap();
        c.join(1, "channel:b").await.unwrap();
        let epoch = c.join(2, "channel:a").await.unwrap()["epoch"].clone();
        c.send(json!({"type":"leave","id":3,"room":"channel:a"}))
            .await
            .unwrap();
        c.expect("left").await.unwrap();
        slow.push((c, epoch));
    }
    // Each resume queues 299 events of 64 KiB, far more than the queue holds,
    // while channel:b gets events as fast as they are acknowledged.
    for (c, epoch) in &mut slow {
        c.send(json!({"type":"join","id":4,"room":"channel:a","since":{"epoch":epoch,"seq":1}}))
            .await
            .unwrap();
    }
    // Publishes until the end of the test, so events keep coming while the
    // closed clients' queues drain.
    let publisher = tokio::spawn(async move {
        for i in 0.. {
            publish(&js, "channel:b", "m", json!({"i": i})).await;
        }
    });
    eventually(
        Duration::from_secs(30),
        "every slow client closed",
        || async {
            metric(&edge, "herald_slow_consumer_disconnects_total").await == clients as f64
        },
    )
    .await;
    for (mut c, _) in slow {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        loop {
            match c.recv().await {
                Ok(v) if v["type"] == "event" && v["room"] == "channel:a" => {
                    a.push(v["data"]["i"].as_u64().unwrap())
                }
                Ok(v) if v["type"] == "event" => b.push(v["data"]["i"].as_u64().unwrap()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert_eq!(c.close_code(), Some(4008));
        // channel:a resumes after its first event (i = 0); channel:b is live
        // from the start.
        let expected: Vec<u64> = (1..=a.len() as u64).collect();
        assert_eq!(a, expected, "a hole in the resumed room");
        let expected: Vec<u64> = (0..b.len() as u64).collect();
        assert_eq!(b, expected, "a hole in the live room");
    }
    publisher.abort();
}

#[tokio::test]
async fn sigterm_drains_clients_with_1012_and_exits_cleanly() {
    let nats = NatsServer::start().unwrap();
    let mut edge = Herald::start(&nats).unwrap();
    let mut clients = Vec::new();
    for u in ["1", "2", "3"] {
        let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token(u, &[]))
            .await
            .unwrap();
        c.expect("joined").await.unwrap();
        clients.push(c);
    }
    edge.sigterm();
    for c in &mut clients {
        let (d, code) = c.expect_close().await.unwrap();
        assert_eq!(code, 1012);
        let d = d.unwrap();
        assert_eq!(
            (d["code"].as_u64(), d["reconnect"].as_bool()),
            (Some(1012), Some(true))
        );
    }
    let status = tokio::task::spawn_blocking(move || edge.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("herald exits after draining");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn setup_is_idempotent_and_serve_refuses_to_start_without_it() {
    let nats = NatsServer::start().unwrap();
    let err = HeraldBuilder::new(&nats)
        .env("HERALD_SETUP_ON_START", "false")
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("herald setup"), "{err}");
    for _ in 0..2 {
        let out = herald(&nats.url(), &["setup"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("stream HERALD"));
    }
    HeraldBuilder::new(&nats)
        .env("HERALD_SETUP_ON_START", "false")
        .start()
        .unwrap();
    // The stream matches the definition kept in nats/stream.json.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let info = js
        .get_stream("HERALD")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../nats/stream.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(file["name"], info.name);
    assert_eq!(file["subjects"], json!(info.subjects));
    assert_eq!(file["max_msgs_per_subject"], info.max_messages_per_subject);
    assert_eq!(
        file["max_age"].as_u64().unwrap() as u128,
        info.max_age.as_nanos()
    );
    assert_eq!(
        file["duplicate_window"].as_u64().unwrap() as u128,
        info.duplicate_window.as_nanos()
    );
    assert_eq!(file["allow_direct"], info.allow_direct);
    let r = info.republish.unwrap();
    assert_eq!(
        (
            file["republish"]["src"].as_str(),
            file["republish"]["dest"].as_str()
        ),
        (Some(r.source.as_str()), Some(r.destination.as_str()))
    );
}

#[tokio::test]
async fn start_up_errors_name_the_setting_to_fix() {
    let nats = NatsServer::start().unwrap();
    let err = HeraldBuilder::new(&nats)
        .unset("HERALD_AUTH__HS256_SECRET")
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("HERALD_AUTH__HS256_SECRET"), "{err}");
    let err = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__OUTBOUND_QUEUE", "0")
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("HERALD_LIMITS__OUTBOUND_QUEUE"), "{err}");
    let err = HeraldBuilder::with_url("nats://127.0.0.1:1")
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot connect to NATS") && err.contains("HERALD_NATS__URL"),
        "{err}"
    );
}

#[tokio::test]
async fn herald_publish_stores_once_per_msg_id_and_sends_volatile_events() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &["channel:*"]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c.join(1, "channel:5").await.unwrap();
    for _ in 0..2 {
        let out = herald(
            &nats.url(),
            &[
                "publish",
                "channel:5",
                "order:paid",
                r#"{"id":1}"#,
                "--msg-id",
                "order-1",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        (ev["event"].as_str(), ev["data"].clone()),
        (Some("order:paid"), json!({"id":1}))
    );
    let out = herald(
        &nats.url(),
        &["publish", "--volatile", "channel:5", "typing", "{}"],
    );
    assert!(out.status.success());
    let ev = c.expect("event").await.unwrap();
    assert!(ev.get("seq").is_none());
    // Bad input is refused before anything is sent.
    let out = herald(&nats.url(), &["publish", "channel:*", "x", "{}"]);
    assert!(!out.status.success());
    let out = herald(&nats.url(), &["publish", "channel:1", "x", "{not json"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn herald_dev_runs_nats_setup_and_an_edge_with_a_working_token() {
    let mut child = Command::new(herald_bin())
        .arg("dev")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env_remove("HERALD_NATS__URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut ws, mut token, mut nats_url) = (None, None, None);
    while ws.is_none() || token.is_none() || nats_url.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("herald dev printed its URLs");
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("websocket"), Some(u)) => ws = Some(u.to_owned()),
            (Some("token"), Some(t)) => token = Some(t.to_owned()),
            (Some("NATS"), Some(u)) => nats_url = Some(u.to_owned()),
            _ => {}
        }
    }
    let (ws, token, nats_url) = (ws.unwrap(), token.unwrap(), nats_url.unwrap());
    let (mut c, _) = WsClient::connect_welcomed(&ws, &token).await.unwrap();
    c.expect("joined").await.unwrap();
    c.join(1, "channel:42").await.unwrap();
    let out = Command::new(herald_bin())
        .args([
            "publish",
            "channel:42",
            "message:new",
            r#"{"text":"hello"}"#,
        ])
        .env("HERALD_NATS__URL", &nats_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.expect("event").await.unwrap()["data"]["text"], "hello");
    // The demo page is served.
    let addr = ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let (status, body) = herald_test_support::process::http_get(addr, "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("Herald"));
    assert!(
        body.contains(r#"from "/herald.js""#),
        "the page loads the client"
    );
    let (status, js) = herald_test_support::process::http_get(addr, "/herald.js")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(js.contains("export class Herald"));
    // The demo chat: a token for any simple name, and `message:send` is stored and
    // delivered as `message:new` (mentions go to the named user's private room).
    let (status, _) = herald_test_support::process::http_get(addr, "/dev/token?user=a%20b")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, body) = herald_test_support::process::http_get(addr, "/dev/token?user=bob")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let bob_token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut bob, _) = WsClient::connect_welcomed(&ws, &bob_token).await.unwrap();
    bob.expect("joined").await.unwrap();
    bob.join(1, "channel:42").await.unwrap();
    c.send(json!({"type": "emit", "id": 2, "event": "message:send",
        "data": {"room": "channel:42", "text": " hi @bob ", "cid": "c1"}}))
        .await
        .unwrap();
    // Two frames each, in an order that is not fixed: alice gets the reply and the
    // event, bob the event and the mention in his private room.
    let mut alice_frames = vec![c.recv().await.unwrap(), c.recv().await.unwrap()];
    alice_frames.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    let [event, reply] = <[serde_json::Value; 2]>::try_from(alice_frames).unwrap();
    assert_eq!(reply["type"], "reply");
    assert_eq!(reply["data"]["duplicate"], false, "{reply}");
    let seq = reply["data"]["seq"].as_u64().unwrap();
    let mut bob_frames = vec![bob.recv().await.unwrap(), bob.recv().await.unwrap()];
    bob_frames.sort_by_key(|f| f["room"].as_str().unwrap_or_default().to_owned());
    let [bob_event, mention] = <[serde_json::Value; 2]>::try_from(bob_frames).unwrap();
    for ev in [&event, &bob_event] {
        assert_eq!(ev["type"], "event", "{ev}");
        assert_eq!(ev["event"], "message:new");
        assert_eq!(ev["seq"].as_u64(), Some(seq));
        assert_eq!(ev["data"]["from"], "alice");
        assert_eq!(ev["data"]["text"], "hi @bob");
    }
    assert_eq!(mention["room"], "user:bob", "{mention}");
    assert_eq!(mention["event"], "mention");
    assert_eq!(mention["data"]["from"], "alice");
    // The same cid again (a retry after a lost answer) is stored once.
    c.send(json!({"type": "emit", "id": 3, "event": "message:send",
        "data": {"room": "channel:42", "text": "hi @bob", "cid": "c1"}}))
        .await
        .unwrap();
    let again = c.expect("reply").await.unwrap();
    assert_eq!(again["data"]["seq"].as_u64(), Some(seq));
    assert_eq!(again["data"]["duplicate"], true);
    c.send(json!({"type": "emit", "id": 4, "event": "message:send",
        "data": {"room": "channel:42", "text": "   "}}))
        .await
        .unwrap();
    assert_eq!(c.expect("error").await.unwrap()["code"], "bad_request");
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn logs_are_json_lines_when_asked() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let logs = edge.logs();
    assert!(!logs.is_empty());
    for l in &logs {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string());
    }
}
