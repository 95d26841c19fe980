//! The writer task: the only owner of a connection's socket sink.
//!
//! It drains the bounded queue in batches (feeding every frame that is already
//! waiting, then flushing once), sends WebSocket pings on schedule, and ends the
//! connection with a `disconnect` frame and a close frame when told to, or at
//! once when the connection is killed (a slow consumer's queue is not flushed:
//! it is the problem).

use super::handle::{ConnHandle, Disconnect, Outbound, OutboundRx};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::SinkExt as _;
use futures::stream::SplitSink;
use herald_protocol::frame::ServerFrame;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Frames written before one flush; bounds the latency a burst adds.
const MAX_BATCH: usize = 128;

/// Sends `disconnect` then a close frame; errors are ignored (the peer may be gone).
pub async fn close_with(sink: &mut SplitSink<WebSocket, Message>, d: &Disconnect) {
    let frame = ServerFrame::Disconnect {
        code: d.code.0,
        reason: &d.reason,
        reconnect: d.reconnect,
    }
    .encode();
    let _ = sink.feed(Message::Text(frame.into())).await;
    let reason: String = d.reason.chars().take(60).collect();
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: d.code.0,
            reason: reason.into(),
        })))
        .await;
    // No `sink.close()`: the socket stays open until the client answers the
    // close frame (see `conn::linger`), so it can read everything we sent.
}

/// Runs until the queue says close, the connection is killed, or the socket fails.
/// `done` is cancelled on exit so that the reader stops too.
pub async fn run(
    mut sink: SplitSink<WebSocket, Message>,
    rx: OutboundRx,
    handle: ConnHandle,
    ping_every: Duration,
    done: CancellationToken,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    // Made once, not per loop turn: a `cancelled()` future registers with the
    // token's waiter list. It is polled only when nothing else is ready.
    let stopped = done.cancelled();
    tokio::pin!(stopped);
    loop {
        // A kill wakes the writer through the queue's `readable` (see
        // `ConnHandle::kill`), and is checked here with one atomic load: a
        // cancellation future polled first on every wake-up would take the
        // token's lock once per delivered frame.
        if let Some(d) = handle.killed() {
            close_with(&mut sink, d).await;
            break;
        }
        tokio::select! {
            biased;
            _ = rx.readable() => {
                let mut next = rx.try_recv();
                let mut n = 0;
                let mut closing = None;
                while let Some(out) = next.take() {
                    // A kill (4008) means a frame could not be queued: anything
                    // taken from the queue after it may come after that hole,
                    // and must not reach the client, whose cursor would then
                    // skip the lost event. The check is ordered after the
                    // kill, since the router kills before it pushes again
                    // (`killed()` is one atomic load). What was fed before it
                    // is flushed below; the loop's top then closes.
                    if handle.killed().is_some() {
                        break;
                    }
                    match out {
                        Outbound::Frame(f) => {
                            if sink.feed(Message::Text(f)).await.is_err() {
                                done.cancel();
                                return;
                            }
                        }
                        Outbound::Close(d) => {
                            closing = Some(d);
                            break;
                        }
                    }
                    n += 1;
                    if n < MAX_BATCH {
                        next = rx.try_recv();
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
                if closing.is_none() && rx.has_pending() {
                    // A full batch: come back for the rest (after the checks
                    // above it in this loop).
                    rx.notify_self();
                }
                if let Some(d) = closing {
                    close_with(&mut sink, &d).await;
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = &mut stopped => {
                // Sends what tungstenite still holds (its reply to the
                // client's close), briefly: the peer may be gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
                break;
            }
        }
    }
    done.cancel();
}
