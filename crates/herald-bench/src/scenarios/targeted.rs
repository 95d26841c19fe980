//! *targeted*: the `sendToUser` pattern. Every connection is in its own
//! `user:u<i>` room plus `--shared-rooms` rooms every connection shares (they
//! make the server's room index realistic; no events go there); each event goes
//! to one user, round-robin, so one event is one delivery and the cost measured
//! is routing, not fan-out.

use super::Plan;

/// Own room per connection, `shared` common rooms.
pub fn plan(conns: usize, shared: usize) -> Plan {
    Plan::PerUser { conns, shared }
}
