//! Scenarios: which rooms each connection joins, and which room each event goes to.
//!
//! A scenario is reduced to a [`Plan`], plain data sent to every worker, so the
//! coordinator (which publishes) and the workers (which check what arrived) agree
//! on what connection `i` must receive without talking during the run. Every
//! target gets the same plan; each target only maps logical room names
//! (`bench:r0`, `user:u5`) to its own form (a NATS subject, a Socket.IO room).

pub mod broadcast;
pub mod churn;
pub mod idle;
pub mod storm;
pub mod targeted;

use serde::{Deserialize, Serialize};

/// The scenarios `--scenario` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Every connection in one room; every event to that room.
    Broadcast,
    /// Every connection in its own `user:u<i>` room plus a few shared rooms; each
    /// event to one user, round-robin (the `sendToUser` pattern).
    Targeted,
    /// Connections join and stay idle; measures server memory per connection.
    Idle,
    /// While C connections are held, more are opened (JWT, join) and closed at
    /// `--churn-rate` per second; measures connects/s and connect latency.
    Churn,
    /// Herald only: C clients joined, all drop, `--missed` events are published
    /// to the room, all reconnect with `since` cursors; measures the time until
    /// every client has every missed event.
    ReconnectStorm,
}

impl Scenario {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Broadcast => "broadcast",
            Scenario::Targeted => "targeted",
            Scenario::Idle => "idle",
            Scenario::Churn => "churn",
            Scenario::ReconnectStorm => "reconnect-storm",
        }
    }

    /// The plan for `conns` connections.
    pub fn plan(self, conns: usize, shared_rooms: usize) -> Plan {
        match self {
            Scenario::Broadcast => broadcast::plan(),
            Scenario::Targeted => targeted::plan(conns, shared_rooms),
            Scenario::Idle => idle::plan(),
            Scenario::Churn | Scenario::ReconnectStorm => broadcast::plan(),
        }
    }
}

/// Rooms per connection and the room of each event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Plan {
    /// All connections in `room`; all events to it.
    OneRoom {
        /// The room.
        room: String,
    },
    /// Connection `i` is in `user:u<i>` and in `shared` rooms `bench:s<j>`;
    /// event `seq` goes to `user:u<seq % conns>`.
    PerUser {
        /// Total connections of the run.
        conns: usize,
        /// Shared rooms every connection also joins (no events go there).
        shared: usize,
    },
}

impl Plan {
    /// Logical rooms connection `i` joins.
    pub fn rooms_of(&self, i: usize) -> Vec<String> {
        match self {
            Plan::OneRoom { room } => vec![room.clone()],
            Plan::PerUser { shared, .. } => std::iter::once(user_room(i))
                .chain((0..*shared).map(|j| format!("bench:s{j}")))
                .collect(),
        }
    }

    /// Logical room event `seq` is published to.
    pub fn room_of_event(&self, seq: u64) -> String {
        match self {
            Plan::OneRoom { room } => room.clone(),
            Plan::PerUser { conns, .. } => user_room(index_of(seq, *conns)),
        }
    }

    /// Whether connection `i` must receive event `seq`.
    pub fn expects(&self, i: usize, seq: u64) -> bool {
        match self {
            Plan::OneRoom { .. } => true,
            Plan::PerUser { conns, .. } => index_of(seq, *conns) == i,
        }
    }

    /// How many of the events `[from, to)` connection `i` must receive.
    pub fn expected_count(&self, i: usize, from: u64, to: u64) -> u64 {
        match self {
            Plan::OneRoom { .. } => to.saturating_sub(from),
            Plan::PerUser { conns, .. } => {
                // Sequences s < x with s % conns == i, without iterating.
                let (c, i) = (conns.max(&1).to_owned() as u64, i as u64);
                let below = |x: u64| x / c + u64::from(x % c > i);
                below(to).saturating_sub(below(from))
            }
        }
    }
}

/// The user id of connection `i` (also its JWT `sub`).
pub fn user_of(i: usize) -> String {
    format!("u{i}")
}

fn user_room(i: usize) -> String {
    format!("user:{}", user_of(i))
}

fn index_of(seq: u64, conns: usize) -> usize {
    usize::try_from(seq % conns.max(1) as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeted_plan_sends_each_event_to_exactly_one_connection() {
        let p = Scenario::Targeted.plan(10, 2);
        for seq in 0..100 {
            assert_eq!((0..10).filter(|i| p.expects(*i, seq)).count(), 1);
            let room = p.room_of_event(seq);
            let owner = (0..10).find(|i| p.expects(*i, seq)).unwrap_or(usize::MAX);
            assert!(p.rooms_of(owner).contains(&room));
        }
        assert_eq!(p.expected_count(3, 0, 100), 10);
        assert_eq!(p.rooms_of(3), vec!["user:u3", "bench:s0", "bench:s1"]);
    }

    #[test]
    fn expected_count_matches_counting_one_by_one() {
        let p = Scenario::Targeted.plan(7, 0);
        for (from, to) in [(0, 0), (0, 1), (3, 50), (13, 14), (100, 171)] {
            for i in 0..7 {
                let slow = (from..to).filter(|s| p.expects(i, *s)).count() as u64;
                assert_eq!(
                    p.expected_count(i, from, to),
                    slow,
                    "conn {i} in [{from}, {to})"
                );
            }
        }
    }

    #[test]
    fn broadcast_plan_sends_every_event_to_everyone() {
        let p = Scenario::Broadcast.plan(10, 0);
        assert!(p.expects(7, 12345));
        assert_eq!(p.expected_count(0, 5, 15), 10);
    }
}
