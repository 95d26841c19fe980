//! `herald-bench ceiling-server`: the most this machine can push, as a yardstick.
//!
//! A plain tokio-tungstenite broadcaster with none of a real gateway's work: no
//! NATS, no JSON, no auth, no ordering or recovery. Subscribers connect to
//! `/sub?room=R[&room=R2…]` and get `ok` once registered; a publisher connects
//! to `/pub` and sends text frames `<room>\n<payload>`; the payload is cut out
//! once and the same bytes (`Utf8Bytes`, reference counted) are queued to every
//! subscriber of the room. It keeps the two things any honest server must have,
//! so the comparison is fair: a bounded queue per connection ([`QUEUE`] frames,
//! like Herald's `limits.outbound_queue`; a full queue drops that subscriber,
//! never blocks the room), and a writer per connection that batches what is
//! waiting into one flush.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames queued per subscriber before it counts as too slow and is dropped.
pub const QUEUE: usize = 1024;
/// Frames a writer takes from its queue before one flush.
const BATCH: usize = 128;

/// tungstenite preallocates a 128 KiB read buffer per connection by default;
/// subscribers send almost nothing, so 4 KiB (it grows for a bigger frame)
/// keeps an idle connection cheap, as a lean server would.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::Sender<Message>)>>>>;

/// Serves on `127.0.0.1:port` until killed.
pub async fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    tracing::info!(port, "ceiling server listening");
    let rooms: Rooms = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = listener.accept().await.context("accepting")?;
        next_id += 1;
        let (rooms, id) = (rooms.clone(), next_id);
        tokio::spawn(async move {
            if let Err(e) = handle(tcp, rooms, id).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

async fn handle(tcp: TcpStream, rooms: Rooms, id: u64) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut uri = None;
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        tcp,
        |req: &Request, resp: Response| {
            uri = Some(req.uri().clone());
            Ok(resp)
        },
        Some(config()),
    )
    .await
    .context("WebSocket handshake")?;
    let uri = uri.context("no request URI")?;
    if uri.path() == "/pub" {
        return publisher(ws, rooms).await;
    }
    let names: Vec<String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("room="))
        .map(str::to_owned)
        .collect();
    // Bounded: when full, the fan-out drops this subscriber instead of waiting.
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    {
        let mut map = rooms
            .lock()
            .map_err(|_| anyhow::anyhow!("room map poisoned"))?;
        for n in &names {
            map.entry(n.clone()).or_default().push((id, tx.clone()));
        }
    }
    drop(tx);
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text("ok")).await?;
    let writer = async {
        while let Some(first) = rx.recv().await {
            sink.feed(first).await?;
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(m) => sink.feed(m).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await?;
        }
        anyhow::Ok(())
    };
    // The reader only notices the close (and lets tungstenite answer pings).
    let reader = async { while let Some(Ok(_)) = stream.next().await {} };
    tokio::select! {
        r = writer => { let _ = r; }
        () = reader => {}
    }
    if let Ok(mut map) = rooms.lock() {
        for n in &names {
            if let Some(subs) = map.get_mut(n) {
                subs.retain(|(i, _)| *i != id);
            }
        }
    }
    Ok(())
}

async fn publisher(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    rooms: Rooms,
) -> Result<()> {
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let bytes = Bytes::from(text);
        let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let room = String::from_utf8_lossy(&bytes[..nl]).into_owned();
        // Cut once; every subscriber gets a clone of the same buffer.
        let payload = Message::Text(
            Utf8Bytes::try_from(bytes.slice(nl + 1..)).context("payload is not UTF-8")?,
        );
        let mut map = rooms
            .lock()
            .map_err(|_| anyhow::anyhow!("room map poisoned"))?;
        if let Some(subs) = map.get_mut(&room) {
            subs.retain(|(id, tx)| match tx.try_send(payload.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(id, room, "subscriber queue full: dropping it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }
    Ok(())
}
