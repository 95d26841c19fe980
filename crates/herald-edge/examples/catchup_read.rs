//! Measures the two ways to read a room's missed events back from JetStream,
//! side by side in one run against a real `nats-server -js`:
//!
//! - **batched Direct Get** (what the edge uses: `StreamReader::range`), a plain
//!   request answered from the stream's store, no server-side state;
//! - an **ordered consumer** filtered to the room's subject, starting at the
//!   cursor — server-side state created (and deleted) for every read.
//!
//! ```sh
//! cargo run --release -p herald-edge --example catchup_read            # one server
//! cargo run --release -p herald-edge --example catchup_read -- cluster # 3 nodes, R3
//! ```
//!
//! It fills a stream with 100 rooms × 1,000 events (interleaved, so a room's
//! events are spread over the stream as in production), then times single reads
//! of 10, 100 and 1,000 events and a "reconnect storm" of 200 concurrent reads of
//! 100 events each from different rooms. Needs `nats-server` on `PATH`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use herald_edge::stream::StreamReader;
use std::time::{Duration, Instant};

const ROOMS: u64 = 100;
const PER_ROOM: u64 = 1000;

fn subject(room: u64) -> String {
    format!("herald.room.bench.r{room}")
}

async fn ordered_read(js: &jetstream::Context, room: u64, after: u64, n: usize) -> usize {
    let stream = js.get_stream("HERALD").await.unwrap();
    let c = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js_inbox(js),
            filter_subject: subject(room),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = c.messages().await.unwrap();
    let mut got = 0;
    while got < n {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("ordered consumer stalled")
            .unwrap()
            .unwrap();
        drop(m);
        got += 1;
    }
    got
}

fn js_inbox(_js: &jetstream::Context) -> String {
    format!("_INBOX.bench.{:016x}", rand::random::<u64>())
}

/// The stream sequences of `room`'s events, for picking cursors.
async fn room_seqs(reader: &StreamReader, room: u64) -> Vec<u64> {
    let (events, _) = reader
        .range(&subject(room), 0, u64::MAX, usize::MAX)
        .await
        .unwrap();
    events.iter().map(|e| e.seq).collect()
}

#[tokio::main]
async fn main() {
    let cluster = std::env::args().any(|a| a == "cluster");
    let mut cfg = herald_edge::Config::default();
    let (_single, _cluster, url) = if cluster {
        let c = herald_test_support::NatsCluster::start()
            .await
            .expect("nats-server on PATH");
        cfg.stream.replicas = 3;
        let url = c.url();
        (None, Some(c), url)
    } else {
        let s = herald_test_support::NatsServer::start().expect("nats-server on PATH");
        let url = s.url();
        (Some(s), None, url)
    };
    println!(
        "{}",
        if cluster {
            "3-node cluster, stream at 3 replicas"
        } else {
            "one server"
        }
    );
    let client = async_nats::ConnectOptions::new()
        .connect(url.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let mut setup = Err(String::new());
    for _ in 0..50 {
        setup = herald_edge::stream::setup(&client, &cfg)
            .await
            .map_err(|e| e.to_string());
        if setup.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    setup.unwrap();
    let js = jetstream::new(client.clone());

    let fill = Instant::now();
    let payload = bytes::Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(100)));
    let mut acks = Vec::new();
    for i in 0..PER_ROOM {
        for room in 0..ROOMS {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Herald-Event", "tick");
            acks.push(
                js.publish_with_headers(subject(room), h, payload.clone())
                    .await
                    .unwrap(),
            );
        }
        if i % 50 == 49 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks.drain(..) {
        a.await.unwrap();
    }
    println!(
        "filled {} events ({ROOMS} rooms x {PER_ROOM}) in {:.1?}",
        ROOMS * PER_ROOM,
        fill.elapsed()
    );

    // The edge's default batch (`catchup.batch`); `BATCH=1024` to compare.
    let batch = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(256);
    println!("Direct Get batch: {batch}");
    let reader = StreamReader::new(client.clone(), "HERALD", batch, Duration::from_secs(10));
    let seqs = room_seqs(&reader, 7).await;
    println!("\n| read | batched Direct Get | ordered consumer | ratio (consumer / direct) |");
    println!("|---|---|---|---|");
    for n in [10usize, 100, 1000] {
        let after = if n >= seqs.len() {
            0
        } else {
            seqs[seqs.len() - n - 1]
        };
        let upto = *seqs.last().unwrap();
        let reps = if n == 1000 { 5 } else { 20 };
        let t = Instant::now();
        for _ in 0..reps {
            let (ev, _) = reader
                .range(&subject(7), after, upto, usize::MAX)
                .await
                .unwrap();
            assert_eq!(ev.len(), n);
        }
        let direct = t.elapsed() / reps;
        let t = Instant::now();
        for _ in 0..reps {
            assert_eq!(ordered_read(&js, 7, after, n).await, n);
        }
        let ordered = t.elapsed() / reps;
        println!(
            "| {n} events of one room | {direct:.2?} | {ordered:.2?} | {:.1}x |",
            ordered.as_secs_f64() / direct.as_secs_f64()
        );
    }

    // A reconnect storm: 200 reads of 100 events each, 2 per room, at once.
    let mut cursors = Vec::new();
    for room in 0..ROOMS {
        let s = room_seqs(&reader, room).await;
        cursors.push((room, s[s.len() - 101], *s.last().unwrap()));
    }
    let t = Instant::now();
    let reads = cursors
        .iter()
        .chain(cursors.iter())
        .map(|&(room, after, upto)| {
            let reader = reader.clone();
            async move {
                reader
                    .range(&subject(room), after, upto, usize::MAX)
                    .await
                    .unwrap()
                    .0
                    .len()
            }
        });
    let total: usize = futures::future::join_all(reads).await.into_iter().sum();
    let direct = t.elapsed();
    assert_eq!(total, 200 * 100);
    let t = Instant::now();
    let reads = cursors
        .iter()
        .chain(cursors.iter())
        .map(|&(room, after, _)| ordered_read(&js, room, after, 100));
    let total: usize = futures::future::join_all(reads).await.into_iter().sum();
    let ordered = t.elapsed();
    assert_eq!(total, 200 * 100);
    println!(
        "| storm: 200 concurrent reads of 100 events | {direct:.2?} | {ordered:.2?} | {:.1}x |",
        ordered.as_secs_f64() / direct.as_secs_f64()
    );
}
