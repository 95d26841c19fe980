//! *reconnect storm* (Herald only): `--conns` clients are joined to the
//! broadcast room and remember their cursor (`joined.epoch` and `seq`); all
//! drop at once; `--missed` events are published to the room; all reconnect at
//! once and join with `since`. Measured: the time from the reconnect order until
//! every client holds every missed event, and lost / duplicated events (must be
//! zero), with the server's CPU and memory over the storm.
//!
//! Socket.IO (with the Redis adapter as run here), NATS core over WebSocket and
//! the ceiling keep no history, so a client that comes back cannot ask for what
//! it missed: the scenario does not apply to them, and the table says so.
