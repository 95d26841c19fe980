//! Typed event catalogs: declare each event's name and payload type once, so that
//! publishing the wrong payload for an event does not compile.

use serde::Serialize;

/// An event an application publishes to rooms: its wire name and its payload type.
///
/// Declare events with [`herald_events!`](crate::herald_events) rather than by hand;
/// the macro also checks the name at compile time. Then publish with
/// [`Publisher::send`](crate::Publisher::send):
///
/// ```
/// use herald_publish::{herald_events, Event};
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// pub struct MessagePayload { pub id: u64, pub text: String }
///
/// herald_events! {
///     /// A message was posted in a channel.
///     pub MessageNew => "message:new": MessagePayload;
/// }
///
/// assert_eq!(MessageNew::NAME, "message:new");
/// ```
///
/// The wrong payload type is a compile error:
///
/// ```compile_fail,E0308
/// use herald_publish::{herald_events, Publisher};
/// use herald_protocol::Room;
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// pub struct MessagePayload { pub text: String }
/// #[derive(Serialize)]
/// pub struct Typing { pub user: String }
///
/// herald_events! { pub MessageNew => "message:new": MessagePayload; }
///
/// async fn wrong(p: &Publisher, room: &Room) {
///     let _ = p.send::<MessageNew>(room, &Typing { user: "6".into() }).await;
/// }
/// ```
///
/// So is an invalid event name:
///
/// ```compile_fail,E0080
/// herald_publish::herald_events! { pub Bad => "has space": u32; }
/// ```
pub trait Event {
    /// The event name clients see (`Herald-Event`).
    const NAME: &'static str;
    /// The payload type, serialized as JSON.
    type Payload: Serialize + ?Sized;
}

/// Whether `name` is a valid event name, usable in constants (the same rule as
/// [`herald_protocol::headers::valid_event_name`]).
pub const fn valid_event_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 64 {
        return false;
    }
    let mut i = 0;
    let mut part_len = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'.' {
            if part_len == 0 {
                return false;
            }
            part_len = 0;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'-' {
            part_len += 1;
        } else {
            return false;
        }
        i += 1;
    }
    part_len > 0
}

/// Declares events: for each `Name => "wire:name": Payload;` a marker type `Name`
/// implementing [`Event`]. An invalid wire name fails to compile.
///
/// ```
/// # use serde::Serialize;
/// # #[derive(Serialize)] pub struct Count { pub n: u32 }
/// herald_publish::herald_events! {
///     /// Unread count changed.
///     pub InboxCount => "inbox:count": Count;
///     pub Typing => "typing": serde_json::Value;
/// }
/// ```
#[macro_export]
macro_rules! herald_events {
    ($( $(#[$meta:meta])* $vis:vis $name:ident => $wire:literal : $payload:ty; )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, Copy)]
            $vis enum $name {}

            const _: () = assert!(
                $crate::valid_event_name($wire),
                concat!("invalid Herald event name: ", $wire)
            );

            impl $crate::Event for $name {
                const NAME: &'static str = $wire;
                type Payload = $payload;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn const_rule_matches_the_protocol() {
        for n in [
            "",
            "a",
            "message:new",
            "orders.created",
            "a..b",
            ".a",
            "a.",
            "a b",
            "é",
            "a*",
            &"x".repeat(64),
            &"x".repeat(65),
        ] {
            assert_eq!(
                valid_event_name(n),
                herald_protocol::headers::valid_event_name(n),
                "{n}"
            );
        }
    }

    herald_events! {
        /// test
        pub T1 => "t:1": u32;
    }

    #[test]
    fn macro_declares_names() {
        assert_eq!(<T1 as Event>::NAME, "t:1");
    }
}
