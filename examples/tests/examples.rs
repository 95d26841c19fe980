//! The example services against real processes: a nats-server and `herald dev`
//! on it (`herald dev --nats-url`: it sets up the stream and bucket and runs an
//! edge with the demo page, as a developer trying the examples would), with the
//! test secret so `user_token` signs valid tokens.
#![allow(clippy::unwrap_used)]

use herald_examples::{chat, membership::Membership, tasks::Tasks};
use herald_protocol::{Room, UserId};
use herald_publish::Publisher;
use herald_test_support::{Herald, HeraldBuilder, NatsServer, WsClient, user_token};
use serde_json::json;
use std::time::Duration;

/// `herald dev --nats-url <nats> <extra…>`, listening on a free port.
fn herald_dev(nats: &NatsServer, extra: &[&str]) -> Herald {
    let url = nats.url();
    let mut args = vec!["dev", "--nats-url", url.as_str()];
    args.extend_from_slice(extra);
    HeraldBuilder::new(nats).args(&args).start().unwrap()
}

async fn connected(edge: &Herald, sub: &str, rooms: &[&str]) -> WsClient {
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token(sub, rooms))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c
}

#[tokio::test]
async fn chat_service_stores_and_broadcasts() {
    let nats = NatsServer::start().unwrap();
    // `herald dev` answers `message:send` with its own demo chat unless told not to;
    // two answerers would race for every request.
    let edge = herald_dev(&nats, &["--no-demo-chat"]);
    let store = chat::Store::default();
    chat::run(nats.client().await.unwrap(), "herald", store.clone())
        .await
        .unwrap();
    let mut alice = connected(&edge, "alice", &["channel:*"]).await;
    let mut bob = connected(&edge, "bob", &["channel:*"]).await;
    alice.join(1, "channel:1").await.unwrap();
    bob.join(1, "channel:1").await.unwrap();
    alice
        .send(json!({"type":"emit","id":2,"event":"message:send","data":{"room":"channel:1","text":" hi "}}))
        .await
        .unwrap();
    let reply = alice.expect("reply").await.unwrap();
    assert_eq!(reply["data"]["text"], "hi");
    assert_eq!(reply["data"]["from"], "alice");
    let ev = bob.expect("event").await.unwrap();
    assert_eq!(ev["event"], "message:new");
    assert_eq!(ev["seq"], reply["data"]["seq"]);
    assert_eq!(ev["data"], json!({"id":1,"from":"alice","text":"hi"}));
    alice.silent_for(Duration::from_millis(300)).await.unwrap();
    assert_eq!(store.messages("channel:1").len(), 1);
    for (data, code) in [
        (json!({"room":"channel:1","text":"  "}), "bad_request"),
        (json!({"room":"nope","text":"x"}), "invalid_room"),
        (json!("garbage"), "bad_request"),
    ] {
        alice
            .send(json!({"type":"emit","id":3,"event":"message:send","data":data}))
            .await
            .unwrap();
        assert_eq!(alice.expect("error").await.unwrap()["code"], code);
    }
    assert_eq!(store.messages("channel:1").len(), 1);
}

/// The next frame that is not a `member:*` event about another user than `user`.
async fn next_about(c: &mut WsClient, user: &str) -> serde_json::Value {
    loop {
        let f = c.recv().await.unwrap();
        let about_other = f["type"] == "event"
            && f["event"].as_str().unwrap().starts_with("member:")
            && f["data"]["user"] != user;
        if !about_other {
            return f;
        }
    }
}

#[tokio::test]
async fn membership_authorizer_decides_joins_and_publishes_changes() {
    let nats = NatsServer::start().unwrap();
    let edge = herald_dev(&nats, &[]);
    let client = nats.client().await.unwrap();
    let members = Membership::new(Publisher::from_client(client.clone()));
    members.run_authorizer(client, "herald").await.unwrap();
    let team = Room::parse("team:1").unwrap();
    let six = UserId::new("6").unwrap();
    let seven = UserId::new("7").unwrap();
    let mut a = connected(&edge, "6", &[]).await;
    let mut b = connected(&edge, "7", &[]).await;
    // Adding 6 joins 6's live connection at once (a `joined` without id).
    members.add(&six, &team).await.unwrap();
    let j = a.expect("joined").await.unwrap();
    assert_eq!((j["room"].as_str(), j.get("id")), (Some("team:1"), None));
    // A member's own join is allowed by the authorizer, a non-member's refused.
    assert_eq!(a.join(1, "team:1").await.unwrap()["room"], "team:1");
    b.send(json!({"type":"join","id":1,"room":"team:1"}))
        .await
        .unwrap();
    let e = b.expect("error").await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("forbidden"), Some("not a member"))
    );

    // Adding 7 publishes to the room and joins 7's live connection.
    members.add(&seven, &team).await.unwrap();
    let ev = next_about(&mut a, "7").await;
    assert_eq!(
        (ev["event"].as_str(), &ev["data"]),
        (Some("member:added"), &json!({"user":"7"}))
    );
    assert_eq!(b.expect("joined").await.unwrap()["room"], "team:1");

    // Removing 7 tells the room and makes 7's connection leave. The event and the
    // control command travel different paths, so 7 may see either first.
    members.remove(&seven, &team).await.unwrap();
    let f = next_about(&mut b, "none").await;
    assert_eq!(
        (f["type"].as_str(), f["room"].as_str()),
        (Some("left"), Some("team:1"))
    );
    let ev = next_about(&mut a, "7").await;
    assert_eq!(ev["event"], "member:removed");
    b.silent_for(Duration::from_millis(300)).await.unwrap();
    b.send(json!({"type":"join","id":2,"room":"team:1"}))
        .await
        .unwrap();
    assert_eq!(b.expect("error").await.unwrap()["code"], "forbidden");
}

/// The Python publisher (`examples/python/publish.py`) against a real edge: a client
/// gets its events. Needs a Python with nats-py: `HERALD_PYTHON` (which
/// `scripts/test.sh` prepares), else `python3`.
#[tokio::test]
async fn python_publisher_reaches_clients() {
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let has_nats = std::process::Command::new(&python)
        .args(["-c", "import nats.aio"])
        .current_dir(&dir)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_nats,
        "{python} cannot import nats-py: run the tests with scripts/test.sh (it prepares a \
         virtualenv), or `pip install nats-py`, or set HERALD_PYTHON to a Python that has it"
    );
    let nats = NatsServer::start().unwrap();
    let edge = herald_dev(&nats, &[]);
    let mut c = connected(&edge, "a@b.io", &["channel:*"]).await;
    c.join(1, "channel:42").await.unwrap();
    let out = tokio::process::Command::new(&python)
        .arg(dir.join("publish.py"))
        .arg(nats.url())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("duplicate=True"), "{stdout}");
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        (ev["event"].as_str(), &ev["data"]),
        (Some("message:new"), &json!({"text":"hi from python"}))
    );
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        (ev["room"].as_str(), ev["event"].as_str()),
        (Some("user:=YUBiLmlv"), Some("inbox:count"))
    );
    let ev = c.expect("event").await.unwrap();
    assert_eq!(
        (ev["event"].as_str(), ev.get("seq")),
        (Some("typing"), None)
    );
    // The retried publish was not delivered twice.
    c.silent_for(Duration::from_millis(300)).await.unwrap();
}

/// One request to the tasks service's NATS API.
async fn tasks_req(
    client: &async_nats::Client,
    op: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let msg = client
        .request(format!("tasks.{op}"), body.to_string().into())
        .await
        .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

#[tokio::test]
async fn tasks_service_publishes_every_mutation_once() {
    let nats = NatsServer::start().unwrap();
    let edge = herald_dev(&nats, &[]);
    let client = nats.client().await.unwrap();
    let tasks = Tasks::new(Publisher::from_client(client.clone()));
    tasks.serve(client.clone(), "tasks").await.unwrap();
    let mut alice = connected(&edge, "alice", &["project:*"]).await;
    alice.join(1, "project:apollo").await.unwrap();
    // bob is not in the project room; he gets the assignment in his private room.
    let mut bob = connected(&edge, "bob", &[]).await;

    let created = tasks_req(
        &client,
        "create",
        json!({"project":"apollo","title":" Write docs ","assignee":"bob"}),
    )
    .await;
    let task = &created["ok"];
    assert_eq!(
        task,
        &json!({"id":1,"project":"apollo","title":"Write docs","done":false,"assignee":"bob","version":1}),
        "{created}"
    );
    let ev = alice.expect("event").await.unwrap();
    assert_eq!(
        (ev["room"].as_str(), ev["event"].as_str(), &ev["data"]),
        (Some("project:apollo"), Some("task:created"), task)
    );
    let first_seq = ev["seq"].as_u64().unwrap();
    let notice = bob.expect("event").await.unwrap();
    assert_eq!(
        (
            notice["room"].as_str(),
            notice["event"].as_str(),
            &notice["data"]
        ),
        (
            Some("user:bob"),
            Some("task:assigned"),
            &json!({"task":1,"project":"apollo","title":"Write docs"})
        )
    );

    let updated = tasks_req(
        &client,
        "update",
        json!({"id":1,"done":true,"assignee":"bob"}),
    )
    .await;
    assert_eq!(updated["ok"]["version"], 2, "{updated}");
    let ev = alice.expect("event").await.unwrap();
    assert_eq!(
        (
            ev["event"].as_str(),
            &ev["data"]["done"],
            &ev["data"]["version"]
        ),
        (Some("task:updated"), &json!(true), &json!(2))
    );
    assert!(ev["seq"].as_u64().unwrap() > first_seq);

    let deleted = tasks_req(&client, "delete", json!({"id":1})).await;
    assert_eq!(deleted["ok"], json!({"id":1,"version":3}));
    let ev = alice.expect("event").await.unwrap();
    assert_eq!(
        (ev["event"].as_str(), &ev["data"]),
        (Some("task:deleted"), &json!({"id":1,"version":3}))
    );

    // Refused mutations publish nothing.
    for (op, body, error) in [
        ("update", json!({"id":1,"done":false}), "no task 1"),
        (
            "create",
            json!({"project":"a b","title":"x"}),
            "bad request",
        ),
        (
            "create",
            json!({"project":"apollo","title":"  "}),
            "bad request",
        ),
        ("archive", json!({}), "unknown operation"),
    ] {
        let r = tasks_req(&client, op, body).await;
        assert!(
            r["error"].as_str().is_some_and(|e| e.contains(error)),
            "{op}: {r}"
        );
    }

    // Publishing every change again with the same keys (a restart that cannot tell
    // what went out) stores nothing new and delivers nothing twice.
    assert_eq!(tasks.replay().await.unwrap(), 3);
    alice.silent_for(Duration::from_millis(500)).await.unwrap();
    // Re-assigning to the same user did not notify again.
    bob.silent_for(Duration::from_millis(100)).await.unwrap();
    tasks.publisher().drain_detached().await;
    let stats = tasks.publisher().detached_stats();
    assert_eq!((stats.ok, stats.failed), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn tasks_service_publishes_concurrent_mutations_in_mutation_order() {
    let nats = NatsServer::start().unwrap();
    let edge = herald_dev(&nats, &[]);
    let client = nats.client().await.unwrap();
    let tasks = Tasks::new(Publisher::from_client(client.clone()));
    tasks.serve(client.clone(), "tasks").await.unwrap();
    let mut alice = connected(&edge, "alice", &["project:*"]).await;
    alice.join(1, "project:p1").await.unwrap();
    tasks_req(&client, "create", json!({"project":"p1","title":"t"})).await;
    assert_eq!(alice.expect("event").await.unwrap()["data"]["version"], 1);
    // 20 updates at once: the service applies and publishes them one at a time, so
    // versions arrive in stream order.
    let updates = (0..20).map(|i| {
        let client = client.clone();
        async move { tasks_req(&client, "update", json!({"id":1,"title":format!("t{i}")})).await }
    });
    for r in futures::future::join_all(updates).await {
        assert!(r["ok"].is_object(), "{r}");
    }
    let mut last_seq = 0;
    for version in 2..=21 {
        let ev = alice.expect("event").await.unwrap();
        assert_eq!(ev["data"]["version"], version, "{ev}");
        let seq = ev["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
    }
}
