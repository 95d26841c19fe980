//! Herald on a 3-node JetStream cluster with the stream at three replicas:
//! delivery and resume survive losing a node.
#![allow(clippy::unwrap_used)]

use herald_test_support::{HeraldBuilder, NatsCluster, WsClient, user_token};
use serde_json::json;
use std::time::{Duration, Instant};

async fn publish_retrying(url: &str, room: &str, i: u64) -> u64 {
    // While a node is down, a publish may need a retry (leader election).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let c = async_nats::connect(url).await.ok()?;
            let js = async_nats::jetstream::new(c);
            let subject = format!("herald.room.{}", room.replace(':', "."));
            let mut h = async_nats::HeaderMap::new();
            h.insert("Herald-Event", "m");
            // One id per event: a retry after a lost ack is not stored twice.
            h.insert("Nats-Msg-Id", format!("{room}-{i}").as_str());
            let ack = js
                .publish_with_headers(subject, h, json!(i).to_string().into())
                .await
                .ok()?;
            tokio::time::timeout(Duration::from_secs(5), ack)
                .await
                .ok()?
                .ok()
                .map(|a| a.sequence)
        };
        if let Some(seq) = attempt.await {
            return seq;
        }
        assert!(
            Instant::now() < deadline,
            "could not publish to the cluster"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn delivery_and_resume_survive_losing_a_node() {
    let mut cluster = NatsCluster::start().await.unwrap();
    cluster.setup_herald(&[]).unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(cluster.node_url(2)).await.unwrap());
    let info = js
        .get_stream("HERALD")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);

    // Each edge talks to a different node first.
    let edge_a = HeraldBuilder::with_url(&format!("{},{}", cluster.node_url(0), cluster.url()))
        .env("HERALD_SETUP_ON_START", "false")
        .start()
        .unwrap();
    let edge_b = HeraldBuilder::with_url(&format!("{},{}", cluster.node_url(1), cluster.url()))
        .env("HERALD_SETUP_ON_START", "false")
        .start()
        .unwrap();
    let t = user_token("6", &["channel:*"]);
    let (mut c, _) = WsClient::connect_welcomed(&edge_a.ws_url(), &t)
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    let epoch = c.join(1, "channel:1").await.unwrap()["epoch"].clone();
    let url = cluster.node_url(2);
    let s0 = publish_retrying(&url, "channel:1", 0).await;
    assert_eq!(c.expect("event").await.unwrap()["seq"], s0);

    // Node 1 (edge A's) goes away; events keep flowing through the others.
    cluster.stop_node(0);
    let mut seqs = Vec::new();
    for i in 1..=5 {
        seqs.push(publish_retrying(&url, "channel:1", i).await);
    }
    let mut got = Vec::new();
    while got.len() < seqs.len() {
        got.push(c.expect("event").await.unwrap()["seq"].as_u64().unwrap());
    }
    assert_eq!(got, seqs);
    c.close().await;

    // Missed while away, resumed on the other edge, with the node back.
    let mut missed = Vec::new();
    for i in 6..=8 {
        missed.push(publish_retrying(&url, "channel:1", i).await);
    }
    cluster.restart_node(0).unwrap();
    let (mut c, _) = WsClient::connect_welcomed(&edge_b.ws_url(), &t)
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c.send(json!({"type":"join","id":2,"room":"channel:1","since":{"epoch":epoch,"seq":seqs[4]}}))
        .await
        .unwrap();
    let j = c.expect("joined").await.unwrap();
    assert_eq!(
        (j["recovered"].as_bool(), j["missed"].as_u64()),
        (Some(true), Some(3))
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.expect("event").await.unwrap()["seq"].as_u64().unwrap());
    }
    assert_eq!(got, missed);
}

#[tokio::test]
async fn events_stored_while_the_edges_node_was_down_are_filled_after_it_reconnects() {
    let mut cluster = NatsCluster::start().await.unwrap();
    cluster.setup_herald(&[]).unwrap();
    // This edge knows only node 1, so while node 1 is down it hears nothing.
    let edge = HeraldBuilder::with_url(&cluster.node_url(0))
        .env("HERALD_SETUP_ON_START", "false")
        .env("HERALD_CATCHUP__CHECK_INTERVAL_SECS", "0")
        // Gaps are read in chunks of this many events: the 3 missed ones take two.
        .env("HERALD_CATCHUP__MAX_EVENTS", "2")
        .env("HERALD_NATS__IGNORE_DISCOVERED_SERVERS", "true")
        .start()
        .unwrap();
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &["channel:*"]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c.join(1, "channel:1").await.unwrap();
    let url = cluster.node_url(2);
    let s0 = publish_retrying(&url, "channel:1", 0).await;
    assert_eq!(c.expect("event").await.unwrap()["seq"], s0);
    cluster.stop_node(0);
    let mut missed = Vec::new();
    for i in 1..=3 {
        missed.push(publish_retrying(&url, "channel:1", i).await);
    }
    cluster.restart_node(0).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            c.recv_within(Duration::from_secs(30)).await.unwrap()["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(
        got, missed,
        "missed events arrive in order after the reconnect"
    );
    let live = publish_retrying(&url, "channel:1", 4).await;
    assert_eq!(c.expect("event").await.unwrap()["seq"], live);
}

#[tokio::test]
async fn events_lost_to_retention_while_an_edge_was_cut_off_are_announced() {
    let mut cluster = NatsCluster::start().await.unwrap();
    cluster
        .setup_herald(&[("HERALD_STREAM__MAX_MSGS_PER_SUBJECT", "2")])
        .unwrap();
    let edge = HeraldBuilder::with_url(&cluster.node_url(0))
        .env("HERALD_SETUP_ON_START", "false")
        .env("HERALD_CATCHUP__CHECK_INTERVAL_SECS", "0")
        .env("HERALD_NATS__IGNORE_DISCOVERED_SERVERS", "true")
        .start()
        .unwrap();
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &["channel:*"]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    let epoch = c.join(1, "channel:1").await.unwrap()["epoch"].clone();
    let url = cluster.node_url(2);
    let s0 = publish_retrying(&url, "channel:1", 0).await;
    assert_eq!(c.expect("event").await.unwrap()["seq"], s0);
    cluster.stop_node(0);
    let mut seqs = Vec::new();
    for i in 1..=4 {
        seqs.push(publish_retrying(&url, "channel:1", i).await);
    }
    cluster.restart_node(0).unwrap();
    // Only the last two are still stored: the client is told, then gets them.
    let notice = c.recv_within(Duration::from_secs(30)).await.unwrap();
    assert_eq!(notice["type"], "joined");
    assert_eq!(
        (notice["room"].as_str(), notice["recovered"].as_bool()),
        (Some("channel:1"), Some(false))
    );
    assert!(notice.get("id").is_none());
    assert_eq!(notice["epoch"], epoch);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(c.expect("event").await.unwrap()["seq"].as_u64().unwrap());
    }
    assert_eq!(got, seqs[2..]);
}
