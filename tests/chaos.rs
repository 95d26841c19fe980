//! The chaos checker: clients spread over two edges and several rooms, a
//! producer publishing at a steady rate, and faults injected while it runs
//! (a NATS node restarted, an edge killed with SIGKILL and started again, a
//! node stopped for a while, a client that stops reading during a burst of
//! large events until the edge closes it with 4008, a client that leaves a
//! room and rejoins it with its cursor). At the end every client must have seen, per
//! room, every acknowledged event exactly once and in stream order, across
//! all its reconnects (which resume with `since` and must say `recovered`).
//!
//! `HERALD_CHAOS_SECS` (default 20) sets how long the producer runs and
//! `HERALD_CHAOS_SEED` (default 42) the seed of the fault schedule and of
//! who joins what, so a failing run can be replayed.
#![allow(clippy::unwrap_used)]

use herald_test_support::{Herald, HeraldBuilder, NatsCluster, WsClient, user_token};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROOMS: usize = 4;
const CLIENTS: usize = 8;
/// Events of 64 KiB published at once for the slow-reader fault: more than the
/// edge's queue (64 frames) and the sockets' buffers hold.
const BURST: usize = 160;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn edge(cluster: &NatsCluster, first: usize) -> Herald {
    HeraldBuilder::with_url(&format!("{},{}", cluster.node_url(first), cluster.url()))
        .env("HERALD_SETUP_ON_START", "false")
        .env("HERALD_CATCHUP__CHECK_INTERVAL_SECS", "2")
        .env("HERALD_LOG__LEVEL", "warn,herald=info")
        // Small enough that a client that stops reading during a burst is
        // closed with 4008 within a second or two.
        .env("HERALD_LIMITS__OUTBOUND_QUEUE", "64")
        .start()
        .unwrap()
}

/// Publishes with a fixed message id until acknowledged; returns the sequence.
async fn publish_acked(nc: &async_nats::Client, room: usize, n: u64) -> u64 {
    publish_id(
        nc,
        room,
        &format!("r{room}-{n}"),
        json!({"n": n}).to_string(),
    )
    .await
}

/// Publishes `body` with message id `id` until acknowledged.
async fn publish_id(nc: &async_nats::Client, room: usize, id: &str, body: String) -> u64 {
    let js = async_nats::jetstream::new(nc.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the cluster accepted no publish for 60 s"
        );
        let mut h = async_nats::HeaderMap::new();
        h.insert("Herald-Event", "tick");
        h.insert("Nats-Msg-Id", id);
        let subject = format!("herald.room.chaos.r{room}");
        if let Ok(ack) = js
            .publish_with_headers(subject, h, body.clone().into())
            .await
            && let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(3), ack).await
        {
            return a.sequence;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Notes an acknowledged sequence of `chaos:r<room>`.
fn record(acked: &Mutex<HashMap<String, Vec<u64>>>, room: usize, seq: u64) {
    acked
        .lock()
        .unwrap()
        .entry(format!("chaos:r{room}"))
        .or_default()
        .push(seq);
}

/// What one client saw: per room, the sequences in arrival order, and problems.
#[derive(Default, Debug)]
struct Seen {
    events: HashMap<String, Vec<u64>>,
    problems: Vec<String>,
    reconnects: u32,
    retried_joins: u32,
    slow_closes: u32,
    rejoins: u32,
}

/// Faults a client performs on itself when told to.
#[derive(Default)]
struct ClientFaults {
    /// Stop reading for a while (until the edge closes with 4008).
    pause: std::sync::atomic::AtomicBool,
    /// Leave the first room, then rejoin it with the cursor.
    leave: std::sync::atomic::AtomicBool,
}

fn join_frame(id: usize, room: &str, cursor: Option<&(Value, u64)>) -> Value {
    match cursor {
        Some((epoch, seq)) => {
            json!({"type":"join","id":id,"room":room,"since":{"epoch":epoch,"seq":seq}})
        }
        None => json!({"type":"join","id":id,"room":room}),
    }
}

async fn run_client(
    id: usize,
    rooms: Vec<String>,
    edges: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    ready: tokio::sync::mpsc::Sender<()>,
    faults: Arc<ClientFaults>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let token = user_token(&format!("u{id}"), &["chaos:*"]);
    let mut cursors: HashMap<String, (Value, u64)> = HashMap::new();
    let mut first = true;
    let mut attempt = id;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let url = {
            let e = edges.lock().unwrap();
            e[attempt % e.len()].clone()
        };
        attempt += 1;
        // A small receive buffer: when this client stops reading, the edge's
        // queue for it fills quickly instead of the kernel buffering megabytes.
        let connected = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = WsClient::connect_small_buffer(&url, &token, 16 * 1024).await?;
            c.expect("welcome").await?;
            anyhow::Ok(c)
        })
        .await;
        let Ok(Ok(mut c)) = connected else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if !first {
            seen.lock().unwrap().reconnects += 1;
        }
        let mut ok = true;
        for (i, room) in rooms.iter().enumerate() {
            if c.send(join_frame(i, room, cursors.get(room)))
                .await
                .is_err()
            {
                ok = false;
                break;
            }
        }
        if first && ok {
            let _ = ready.send(()).await;
            first = false;
        }
        // Read until the connection ends or the run stops.
        // `away`: the first room was left; rejoin it once `left` came and the time is up.
        let mut away: Option<(Instant, bool)> = None;
        while ok && !stop.load(Relaxed) {
            if faults.pause.swap(false, Relaxed) {
                // A slow reader: the edge must close it with 4008 rather than
                // buffer without bound; it then resumes like any reconnect.
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            if away.is_none() && faults.leave.swap(false, Relaxed) {
                if c.send(json!({"type":"leave","id":100,"room":rooms[0]}))
                    .await
                    .is_err()
                {
                    break;
                }
                away = Some((Instant::now() + Duration::from_millis(1500), false));
            }
            if let Some((at, true)) = away
                && Instant::now() >= at
            {
                if c.send(join_frame(0, &rooms[0], cursors.get(&rooms[0])))
                    .await
                    .is_err()
                {
                    break;
                }
                seen.lock().unwrap().rejoins += 1;
                away = None;
            }
            let v = match c.recv_within(Duration::from_millis(500)).await {
                Ok(v) => v,
                Err(e) if e.to_string().starts_with("no frame") => continue,
                Err(_) => {
                    if c.close_code() == Some(4008) {
                        seen.lock().unwrap().slow_closes += 1;
                    }
                    break;
                }
            };
            match v["type"].as_str() {
                Some("left") => {
                    if let Some((_, left)) = away.as_mut() {
                        *left = true;
                    }
                }
                Some("joined") => {
                    let room = v["room"].as_str().unwrap().to_owned();
                    if room.starts_with("user:") {
                        continue;
                    }
                    if cursors.contains_key(&room) && v["recovered"] != true {
                        seen.lock()
                            .unwrap()
                            .problems
                            .push(format!("u{id} {room}: resume not recovered: {v}"));
                    }
                    let cur = cursors
                        .entry(room)
                        .or_insert((v["epoch"].clone(), v["seq"].as_u64().unwrap()));
                    cur.0 = v["epoch"].clone();
                }
                Some("event") => {
                    let room = v["room"].as_str().unwrap().to_owned();
                    let seq = v["seq"].as_u64().unwrap();
                    let cur = cursors.get_mut(&room).unwrap();
                    let mut s = seen.lock().unwrap();
                    if seq <= cur.1 {
                        s.problems.push(format!(
                            "u{id} {room}: duplicate or out of order: {seq} after {}",
                            cur.1
                        ));
                    } else {
                        cur.1 = seq;
                    }
                    s.events.entry(room).or_default().push(seq);
                }
                // `unavailable` answers a join while JetStream is electing a
                // leader: the contract's "try again", which an app does.
                Some("error") if v["code"] == "unavailable" && v["id"].as_u64() < Some(100) => {
                    let i = v["id"].as_u64().unwrap() as usize;
                    let frame = join_frame(i, &rooms[i], cursors.get(&rooms[i]));
                    seen.lock().unwrap().retried_joins += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if c.send(frame).await.is_err() {
                        break;
                    }
                }
                Some("error") => seen
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("u{id}: error {v}")),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_sees_every_event_once_in_order_through_faults() {
    let secs = env_u64("HERALD_CHAOS_SECS", 20);
    let seed = env_u64("HERALD_CHAOS_SEED", 42);
    eprintln!("chaos: {secs} s, seed {seed} (HERALD_CHAOS_SECS, HERALD_CHAOS_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = NatsCluster::start().await.unwrap();
    cluster.setup_herald(&[]).unwrap();
    let mut edges = [edge(&cluster, 0), edge(&cluster, 1)];
    let urls = Arc::new(Mutex::new(
        edges.iter().map(|e| e.ws_url()).collect::<Vec<_>>(),
    ));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(CLIENTS);
    let mut clients = Vec::new();
    let mut client_faults: Vec<Arc<ClientFaults>> = Vec::new();
    let mut membership = Vec::new();
    for id in 0..CLIENTS {
        let a = rng.random_range(0..ROOMS);
        let b = (a + 1 + rng.random_range(0..ROOMS - 1)) % ROOMS;
        let rooms = vec![format!("chaos:r{a}"), format!("chaos:r{b}")];
        membership.push(rooms.clone());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let f = Arc::new(ClientFaults::default());
        let task = tokio::spawn(run_client(
            id,
            rooms,
            urls.clone(),
            stop.clone(),
            seen.clone(),
            ready_tx.clone(),
            f.clone(),
        ));
        clients.push((task, seen));
        client_faults.push(f);
    }
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .unwrap();
    }
    // Let the joins settle before the first event.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The producer: ~40 events per second over the rooms, each acknowledged.
    let acked: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let nc = async_nats::connect(cluster.node_url(2)).await.unwrap();
        let acked = acked.clone();
        let producing = producing.clone();
        let mut prng = StdRng::seed_from_u64(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            while producing.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let room = prng.random_range(0..ROOMS);
                let seq = publish_acked(&nc, room, n).await;
                record(&acked, room, seq);
                n += 1;
            }
            n
        })
    };

    // Faults, one every few seconds, from the seeded schedule.
    let end = Instant::now() + Duration::from_secs(secs);
    let mut faults = Vec::new();
    let mut slow_faults = 0;
    let burster = async_nats::connect(cluster.node_url(2)).await.unwrap();
    while Instant::now() + Duration::from_secs(4) < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
        match rng.random_range(0..5) {
            3 => {
                // A slow reader during a burst of 64 KiB events to its room.
                let k = rng.random_range(0..CLIENTS);
                let room: usize = membership[k][0]["chaos:r".len()..].parse().unwrap();
                faults.push(format!(
                    "client u{k} reads slowly during a burst to chaos:r{room}"
                ));
                slow_faults += 1;
                client_faults[k]
                    .pause
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(600)).await;
                let body = json!({"pad": "x".repeat(64 * 1024)}).to_string();
                let f = faults.len();
                for j in 0..BURST {
                    let seq =
                        publish_id(&burster, room, &format!("burst{f}-{j}"), body.clone()).await;
                    record(&acked, room, seq);
                }
            }
            4 => {
                let k = rng.random_range(0..CLIENTS);
                faults.push(format!(
                    "client u{k} leaves {} and rejoins",
                    membership[k][0]
                ));
                client_faults[k]
                    .leave
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            0 => {
                let node = rng.random_range(0..2); // node 3 carries the producer
                faults.push(format!("restart nats node {}", node + 1));
                cluster.restart_node(node).unwrap();
            }
            1 => {
                let which = rng.random_range(0..2);
                faults.push(format!("kill -9 edge {which}"));
                edges[which].kill9();
                tokio::time::sleep(Duration::from_millis(500)).await;
                edges[which] = edge(&cluster, which);
                urls.lock().unwrap()[which] = edges[which].ws_url();
            }
            _ => {
                let node = rng.random_range(0..2);
                faults.push(format!("stop nats node {} for 2 s", node + 1));
                cluster.stop_node(node);
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.restart_node(node).unwrap();
            }
        }
    }
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    producing.store(false, std::sync::atomic::Ordering::Relaxed);
    let published = producer.await.unwrap();
    eprintln!("chaos: {published} events published; faults: {faults:?}");
    assert!(!faults.is_empty() || secs < 8, "no fault was injected");

    // Wait until every client has caught up (or give up after 40 s). The
    // producer and the bursts record acks concurrently: sort by sequence.
    let mut acked = acked.lock().unwrap().clone();
    for seqs in acked.values_mut() {
        seqs.sort_unstable();
    }
    let caught_up = |i: usize| {
        let s = clients[i].1.lock().unwrap();
        membership[i].iter().all(|room| {
            let want = acked.get(room).map_or(0, Vec::len);
            s.events.get(room).map_or(0, Vec::len) >= want
        })
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(0..CLIENTS).all(caught_up) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    let (mut deliveries, mut gaps, mut duplicates, mut reorders, mut reconnects) =
        (0usize, 0usize, 0usize, 0usize, 0u32);
    let (mut slow_closes, mut rejoins) = (0u32, 0u32);
    for (i, (task, seen)) in clients.into_iter().enumerate() {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        let s = seen.lock().unwrap();
        failures.extend(s.problems.iter().cloned());
        reconnects += s.reconnects;
        slow_closes += s.slow_closes;
        rejoins += s.rejoins;
        for room in &membership[i] {
            let want = acked.get(room).cloned().unwrap_or_default();
            let got = s.events.get(room).cloned().unwrap_or_default();
            deliveries += got.len();
            gaps += want.iter().filter(|x| !got.contains(x)).count();
            duplicates += got.len() - got.iter().collect::<std::collections::HashSet<_>>().len();
            reorders += got.windows(2).filter(|w| w[1] < w[0]).count();
            if got != want {
                let missing: Vec<_> = want.iter().filter(|x| !got.contains(x)).collect();
                failures.push(format!(
                    "u{i} {room}: got {} of {} events (reconnects {}), missing {missing:?}",
                    got.len(),
                    want.len(),
                    s.reconnects
                ));
            }
        }
    }
    eprintln!(
        "chaos: seed {seed}: {published} events published, {deliveries} deliveries checked, {} faults, \
         {reconnects} client reconnects ({slow_closes} after 4008), {rejoins} rejoins, \
         {gaps} gaps, {duplicates} duplicates, {reorders} reorders",
        faults.len()
    );
    // A slow reader must really have been closed with 4008 (and then resumed).
    if slow_faults > 0 && slow_closes == 0 {
        failures.push(format!(
            "{slow_faults} slow-reader faults but no 4008 close"
        ));
    }
    assert!(
        failures.is_empty(),
        "seed {seed}, faults {faults:?}:\n{}",
        failures.join("\n")
    );
}
