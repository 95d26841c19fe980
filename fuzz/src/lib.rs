//! The properties Herald's parsers must hold for any input, one function per
//! fuzz target.
//!
//! Each function takes raw bytes and panics when a property fails. The
//! `cargo fuzz` targets in `fuzz_targets/` call them, and so does
//! `tests/fuzz_corpus.rs` (which includes this file as a module), replaying the
//! committed corpus on stable Rust in every CI run. Keep this file free of
//! anything but `herald_protocol`, `herald_edge`, `futures` and `serde_json`,
//! so that both can build it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use herald_edge::auth::Verifier;
use herald_edge::config::AuthConfig;
use herald_protocol::claims::JoinDecision;
use herald_protocol::frame::{
    ClientFrame, MAX_DATA_DEPTH, MAX_ERROR_MESSAGE_BYTES, decode_client_frame, event_frame,
    reply_frame,
};
use herald_protocol::headers::valid_event_name;
use herald_protocol::room::{MAX_USER_ROOM_ID_BYTES, USER_KIND};
use herald_protocol::user::MAX_USER_ID_BYTES;
use herald_protocol::{Claims, Room, RoomPattern, Subjects, UserId};
use std::sync::OnceLock;

/// The HS secret of the token target's verifier (the seeds are signed with it).
pub const FUZZ_SECRET: &str = "herald-fuzz-secret-0123456789abcdef";

/// Tokens genuinely signed with the fuzz keys (one per line). The token target
/// accepts a token only if its signed part is one of these: anything else
/// accepted would be a forgery.
pub const SIGNED_TOKENS: &str = include_str!("signed_tokens.txt");

/// A room name is safe as one subject token pair: `kind:id` of the room
/// alphabet, exactly one colon, no NATS metacharacter or whitespace.
fn assert_room_safe(room: &Room) {
    let s = room.as_str();
    assert_eq!(s.matches(':').count(), 1, "{s:?}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_=-:".contains(&b)),
        "{s:?}"
    );
    assert_eq!(
        Room::parse(s).as_ref(),
        Ok(room),
        "{s:?} must parse to itself"
    );
    let subjects = Subjects::default();
    for (subj, tokens) in [(subjects.room(room), 4), (subjects.live(room), 5)] {
        assert!(
            subj.split('.')
                .all(|t| !t.is_empty() && t != "*" && t != ">"),
            "{subj:?}"
        );
        assert_eq!(subj.split('.').count(), tokens, "{subj:?}");
        assert_eq!(subjects.room_of(&subj).as_ref(), Some(room), "{subj:?}");
    }
    if room.kind() == USER_KIND {
        let u = room.user().expect("a user room names a user");
        assert_eq!(&Room::for_user(&u), room);
    }
}

/// Nesting depth of a JSON text, brackets inside strings ignored.
fn depth(text: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(text).expect("accepted data is JSON");
    fn d(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(d).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(d).max().unwrap_or(0),
            _ => 0,
        }
    }
    d(&v)
}

/// Target `frame`: the client frame decoder, and the event/reply encoders on
/// the same bytes as a producer payload.
///
/// * decoding never panics; an accepted frame holds only safe rooms, valid
///   event names, non-empty tokens, and `data` that any JSON parser can
///   represent (no out-of-range number) nested at most [`MAX_DATA_DEPTH`] deep;
/// * a refused frame's message is short (it is sent back, maybe logged);
/// * an event or reply frame built around any payload is valid JSON, and a
///   payload that is JSON is passed through unchanged.
pub fn frame(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match decode_client_frame(text) {
            Ok(f) => check_frame(&f),
            Err(e) => assert!(
                e.message.len() <= MAX_ERROR_MESSAGE_BYTES,
                "error message of {} bytes",
                e.message.len()
            ),
        }
    }
    let payload_json = std::str::from_utf8(data)
        .ok()
        .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
    for out in [
        event_frame("channel:1", "msg", Some(7), data),
        reply_frame(Some(3), data),
    ] {
        // Grammar validity (numbers of any size are JSON, as browsers read them).
        let v: serde_json::Value = match serde_json::from_str(&out) {
            Ok(v) => v,
            Err(_) => {
                serde_json::from_str::<serde::de::IgnoredAny>(&out)
                    .unwrap_or_else(|e| panic!("{out:?} is not JSON: {e}"));
                continue;
            }
        };
        assert!(v.is_object());
        if let Some(p) = payload_json
            && !p.trim().is_empty()
        {
            assert!(
                out.contains(p.trim()),
                "payload not passed through: {out:?}"
            );
        }
    }
}

fn check_frame(f: &ClientFrame) {
    match f {
        ClientFrame::Auth { token } | ClientFrame::Refresh { token, .. } => {
            assert!(!token.is_empty())
        }
        ClientFrame::Join { room, .. }
        | ClientFrame::Leave { room, .. }
        | ClientFrame::Presence { room, .. }
        | ClientFrame::History { room, .. } => assert_room_safe(room),
        ClientFrame::Emit { event, data, .. } => {
            assert!(valid_event_name(event), "{event:?}");
            check_data(data.as_deref());
        }
        ClientFrame::Publish {
            room, event, data, ..
        } => {
            assert_room_safe(room);
            assert!(valid_event_name(event), "{event:?}");
            check_data(data.as_deref());
        }
        ClientFrame::Ping { .. } => {}
    }
}

fn check_data(data: Option<&serde_json::value::RawValue>) {
    if let Some(d) = data {
        assert!(depth(d.get()) <= MAX_DATA_DEPTH, "{:?}", d.get());
    }
}

/// Target `room`: room names, subjects and room patterns. The input is split
/// at its first newline into a pattern and a name.
///
/// * an accepted room is safe (see `assert_room_safe`) and maps to a subject
///   and back to itself;
/// * any subject a room is recovered from is that room's canonical subject
///   (no second spelling reaches the same room);
/// * no pattern grants another user's private room, for joining or (unless
///   named exactly) publishing.
pub fn room(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let subjects = Subjects::default();
    let (pattern, name) = text.split_once('\n').unwrap_or((text, text));
    for s in [pattern, name] {
        if let Ok(r) = Room::parse(s) {
            assert_eq!(r.as_str(), s);
            assert_room_safe(&r);
        }
        if let Some(r) = subjects.room_of(s) {
            assert!(
                subjects.room(&r) == s || subjects.live(&r) == s,
                "{s:?} is not the canonical subject of {r:?}"
            );
        }
    }
    let me = UserId::new("6").unwrap();
    let claims = Claims {
        sub: "6".into(),
        rooms: vec![pattern.to_owned()],
        publish: vec![pattern.to_owned()],
        ..Default::default()
    };
    let p = RoomPattern::parse(pattern);
    for target in [Room::parse(name).ok(), Room::parse("user:7").ok()]
        .into_iter()
        .flatten()
    {
        let foreign = target.kind() == USER_KIND && target.user().as_ref() != Some(&me);
        let decision = claims.may_join(&me, &target);
        if foreign {
            assert_eq!(
                decision,
                JoinDecision::Deny,
                "{pattern:?} opened {target:?}"
            );
            assert!(
                !claims.may_publish(&me, &target) || pattern == target.as_str(),
                "{pattern:?} allows publishing to {target:?}"
            );
        } else if decision == JoinDecision::Allow && target.kind() != USER_KIND {
            assert!(p.as_ref().is_some_and(|p| p.matches(&target)));
        }
        if let Some(RoomPattern::Prefix { kind, prefix }) = &p
            && p.as_ref().is_some_and(|p| p.matches(&target))
        {
            assert_eq!(target.kind(), kind);
            assert!(target.id().starts_with(prefix.as_str()));
        }
    }
}

/// Target `user`: the reversible user-id encoding.
///
/// * any 1..=256-byte UTF-8 id encodes to the subject-safe alphabet, decodes
///   back to itself, is verbatim exactly when it is `[A-Za-z0-9_-]`, and its
///   private room and control subject both lead back to it;
/// * decoding accepts only the one canonical spelling of an id.
pub fn user(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = UserId::decode(text) {
        assert_eq!(u.encoded(), text, "a second spelling of {u:?} was accepted");
    }
    match UserId::new(text) {
        Ok(u) => {
            let enc = u.encoded();
            assert!(
                enc.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_=-".contains(&b)),
                "{enc:?}"
            );
            assert!(enc.len() <= MAX_USER_ROOM_ID_BYTES);
            let plain = text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            assert_eq!(plain, enc == text);
            assert_eq!(UserId::decode(&enc).as_ref(), Ok(&u));
            let r = Room::for_user(&u);
            assert_room_safe(&r);
            assert_eq!(r.user().as_ref(), Some(&u));
            let s = Subjects::default();
            assert_eq!(s.user_of_ctl(&s.ctl_user(&u)).as_ref(), Some(&u));
        }
        Err(_) => assert!(text.is_empty() || text.len() > MAX_USER_ID_BYTES),
    }
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::from_config(&AuthConfig {
            hs256_secret: Some(FUZZ_SECRET.into()),
            rs256_public_key: Some(include_str!("../../tests/fixtures/rsa-public.pem").into()),
            es256_public_key: Some(include_str!("../../tests/fixtures/ec-public.pem").into()),
            leeway_secs: 0,
            ..Default::default()
        })
        .expect("fuzz verifier")
    })
}

/// Target `token`: the edge's token verifier on arbitrary strings, with an
/// HS secret and RSA and EC public keys configured.
///
/// * it never panics;
/// * it accepts a token only if the signed part (header and payload) is one
///   that was really signed (no forgery, no algorithm confusion, no `none`);
/// * a refusal's message (sent to the client, logged) never repeats a part of
///   the token.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match futures::executor::block_on(verifier().verify(text)) {
        Ok(session) => {
            let signed = text.rsplit_once('.').map(|(s, _)| s);
            assert!(
                SIGNED_TOKENS
                    .lines()
                    .any(|t| t.rsplit_once('.').map(|(s, _)| s) == signed),
                "accepted a token that was never signed: {text:?}"
            );
            assert!(!session.user.as_str().is_empty());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.len() <= 512, "{msg}");
            // Parts of a real token are base64url; a part that is itself
            // message text (the fuzzer builds those) proves nothing.
            let base64url = |p: &&str| {
                p.len() >= 16
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            for part in text.split('.').filter(base64url) {
                assert!(!msg.contains(part), "the token leaks into {msg:?}");
            }
        }
    }
}
