//! Resume (contract §4, basic): a client that comes back with a cursor gets
//! exactly what it missed, in order, then live events, on any edge.
#![allow(clippy::unwrap_used)]

use herald_test_support::{Herald, HeraldBuilder, NatsServer, WsClient, publish, user_token};
use serde_json::{Value, json};
use std::time::Duration;

async fn connected(edge: &Herald, user: &str) -> WsClient {
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token(user, &["channel:*"]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    c
}

async fn join_since(c: &mut WsClient, room: &str, epoch: &Value, seq: u64) -> Value {
    c.send(json!({"type":"join","id":1,"room":room,"since":{"epoch":epoch,"seq":seq}}))
        .await
        .unwrap();
    c.expect("joined").await.unwrap()
}

async fn events(c: &mut WsClient, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.expect("event").await.unwrap()["seq"].as_u64().unwrap());
    }
    out
}

#[tokio::test]
async fn rejoining_with_a_cursor_delivers_what_was_missed_then_live_events() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let other = Herald::start(&nats).unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut c = connected(&edge, "6").await;
    let joined = c.join(1, "channel:1").await.unwrap();
    let epoch = joined["epoch"].clone();
    let first = publish(&js, "channel:1", "m", json!(0)).await;
    assert_eq!(events(&mut c, 1).await, [first]);
    c.close().await;
    // Away: five events in this room, noise in another.
    let mut missed = Vec::new();
    for i in 1..=5 {
        missed.push(publish(&js, "channel:1", "m", json!(i)).await);
        publish(&js, "channel:2", "m", json!(i)).await;
    }
    // Back, on the other edge.
    let mut c = connected(&other, "6").await;
    let j = join_since(&mut c, "channel:1", &epoch, first).await;
    assert_eq!(j["recovered"], true);
    assert_eq!(j["missed"], 5);
    assert_eq!(j["seq"], *missed.last().unwrap());
    assert_eq!(j["epoch"], epoch);
    assert_eq!(events(&mut c, 5).await, missed);
    let live = publish(&js, "channel:1", "m", json!(6)).await;
    assert_eq!(events(&mut c, 1).await, [live]);
    c.silent_for(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn a_cursor_at_the_head_or_from_an_empty_room_recovers() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut c = connected(&edge, "6").await;
    let j = c.join(1, "channel:1").await.unwrap();
    let epoch = j["epoch"].clone();
    assert_eq!(j["seq"], 0);
    c.close().await;
    let s1 = publish(&js, "channel:1", "m", json!(1)).await;
    let s2 = publish(&js, "channel:1", "m", json!(2)).await;
    let mut c = connected(&edge, "6").await;
    let j = join_since(&mut c, "channel:1", &epoch, 0).await;
    assert_eq!(
        (j["recovered"].as_bool(), j["missed"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(events(&mut c, 2).await, [s1, s2]);
    c.close().await;
    let mut c = connected(&edge, "6").await;
    let j = join_since(&mut c, "channel:1", &epoch, s2).await;
    assert_eq!(
        (j["recovered"].as_bool(), j["missed"].as_u64()),
        (Some(true), Some(0))
    );
    c.silent_for(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn a_cursor_from_another_epoch_or_past_retention_is_not_recovered() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_STREAM__MAX_MSGS_PER_SUBJECT", "3")
        .start()
        .unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut c = connected(&edge, "6").await;
    let epoch = c.join(1, "channel:1").await.unwrap()["epoch"].clone();
    let first = publish(&js, "channel:1", "m", json!(1)).await;
    events(&mut c, 1).await;
    c.close().await;
    for i in 0..5 {
        publish(&js, "channel:1", "m", json!(i)).await;
    }
    // `first` has been trimmed by the per-room limit of 3.
    let mut c = connected(&edge, "6").await;
    let j = join_since(&mut c, "channel:1", &epoch, first).await;
    assert_eq!(
        (j["recovered"].as_bool(), j["missed"].as_u64()),
        (Some(false), Some(0))
    );
    c.silent_for(Duration::from_millis(300)).await.unwrap();
    let mut d = connected(&edge, "7").await;
    let j = join_since(&mut d, "channel:1", &json!("not-this-stream"), first).await;
    assert_eq!(
        (j["recovered"].as_bool(), j["missed"].as_u64()),
        (Some(false), Some(0))
    );
    // A cursor from the future (another stream's numbering) is not trusted either.
    let mut e = connected(&edge, "8").await;
    let j = join_since(&mut e, "channel:1", &epoch, 1_000_000).await;
    assert_eq!(j["recovered"], false);
}

#[tokio::test]
async fn the_seam_between_stored_and_live_events_has_no_gap_and_no_duplicate() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut c = connected(&edge, "6").await;
    let epoch = c.join(1, "channel:9").await.unwrap()["epoch"].clone();
    let first = publish(&js, "channel:9", "m", json!(0)).await;
    events(&mut c, 1).await;
    c.close().await;
    for i in 0..50 {
        publish(&js, "channel:9", "m", json!(i)).await;
    }
    // A producer keeps publishing while the client resumes.
    let producer = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..200 {
                seqs.push(publish(&js, "channel:9", "m", json!(i)).await);
            }
            seqs
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut c = connected(&edge, "6").await;
    let j = join_since(&mut c, "channel:9", &epoch, first).await;
    assert_eq!(j["recovered"], true);
    let during = producer.await.unwrap();
    let last = *during.last().unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(c.expect("event").await.unwrap()["seq"].as_u64().unwrap());
    }
    // Every event after the cursor, each once, in order.
    let mut want: Vec<u64> = got.clone();
    want.sort();
    want.dedup();
    assert_eq!(got, want, "order or duplicates");
    assert_eq!(got.len(), 250, "gap: {got:?}");
    assert!(got[0] > first);
    c.silent_for(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn rejoining_a_room_already_joined_reports_without_replaying() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut c = connected(&edge, "6").await;
    let j = c.join(1, "channel:1").await.unwrap();
    let epoch = j["epoch"].clone();
    let s = publish(&js, "channel:1", "m", json!(1)).await;
    events(&mut c, 1).await;
    let j = join_since(&mut c, "channel:1", &epoch, s).await;
    assert_eq!(
        (
            j["recovered"].as_bool(),
            j["missed"].as_u64(),
            j["seq"].as_u64()
        ),
        (Some(true), Some(0), Some(s))
    );
    c.silent_for(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn history_returns_the_last_events_oldest_first_capped_and_authorized() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_CATCHUP__HISTORY_MAX", "5")
        .env("HERALD_CATCHUP__BATCH", "3")
        .start()
        .unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut seqs = Vec::new();
    for i in 0..8 {
        seqs.push(publish(&js, "channel:h", "m", json!({"i": i})).await);
        publish(&js, "channel:other", "m", json!(i)).await;
    }
    // Not a member, but the claim allows the room: history is authorized like a join.
    let mut c = connected(&edge, "6").await;
    c.send(json!({"type":"history","id":6,"room":"channel:h","limit":3}))
        .await
        .unwrap();
    let h = c.expect("history").await.unwrap();
    assert_eq!(
        (h["id"].as_i64(), h["room"].as_str()),
        (Some(6), Some("channel:h"))
    );
    let events = h["events"].as_array().unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        seqs[5..]
    );
    assert_eq!(
        events[0],
        json!({"type":"event","room":"channel:h","event":"m","seq":seqs[5],"data":{"i":5}})
    );
    // A larger limit is capped by config.
    c.send(json!({"type":"history","id":7,"room":"channel:h","limit":1000}))
        .await
        .unwrap();
    let h = c.expect("history").await.unwrap();
    assert_eq!(h["events"].as_array().unwrap().len(), 5);
    // An empty room has an empty history.
    c.send(json!({"type":"history","id":8,"room":"channel:empty"}))
        .await
        .unwrap();
    assert_eq!(c.expect("history").await.unwrap()["events"], json!([]));
    // A room the token does not allow is refused.
    c.send(json!({"type":"history","id":9,"room":"secret:1"}))
        .await
        .unwrap();
    let e = c.expect("error").await.unwrap();
    assert_eq!(
        (e["id"].as_i64(), e["code"].as_str()),
        (Some(9), Some("forbidden"))
    );
}

#[tokio::test]
async fn a_reconnect_storm_reads_each_missed_range_once() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut c = connected(&edge, "0").await;
    let epoch = c.join(1, "channel:storm").await.unwrap()["epoch"].clone();
    let first = publish(&js, "channel:storm", "m", json!(0)).await;
    events(&mut c, 1).await;
    c.close().await;
    let mut missed = Vec::new();
    for i in 0..100 {
        missed.push(publish(&js, "channel:storm", "m", json!(i)).await);
    }
    // 40 clients come back at once with the same cursor.
    const N: usize = 40;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(connected(&edge, &format!("s{i}")).await);
    }
    let before = herald_test_support::metric(&edge, "herald_catchup_reads_total").await;
    for c in &mut clients {
        c.send(json!({"type":"join","id":1,"room":"channel:storm","since":{"epoch":epoch,"seq":first}})).await.unwrap();
    }
    for c in &mut clients {
        let j = c.expect("joined").await.unwrap();
        assert_eq!(
            (j["recovered"].as_bool(), j["missed"].as_u64()),
            (Some(true), Some(100))
        );
        assert_eq!(events(c, 100).await, missed);
    }
    let reads = herald_test_support::metric(&edge, "herald_catchup_reads_total").await - before;
    eprintln!("{N} resumes of the same range took {reads} stream reads");
    assert!(
        reads < (N / 2) as f64,
        "{reads} reads for {N} identical resumes"
    );
}
