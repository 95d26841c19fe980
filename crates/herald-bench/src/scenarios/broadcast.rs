//! *broadcast*: C connections in one room, events of `--size` bytes at `--rate`
//! per second. The fan-out path under the heaviest load: every event becomes C
//! deliveries.

use super::Plan;

/// The one room of the broadcast.
pub const ROOM: &str = "bench:r0";

/// Everyone in [`ROOM`].
pub fn plan() -> Plan {
    Plan::OneRoom { room: ROOM.into() }
}
