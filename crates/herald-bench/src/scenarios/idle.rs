//! *idle*: C connections join one room and stay quiet. The coordinator reads the
//! server's resident memory before the first connection and after the last join;
//! the difference over C is the memory one idle connection costs the server.

use super::Plan;

/// The room idle connections sit in.
pub const ROOM: &str = "bench:idle";

/// Everyone in [`ROOM`], no events.
pub fn plan() -> Plan {
    Plan::OneRoom { room: ROOM.into() }
}
