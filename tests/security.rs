//! The attacker's matrix: forged and malformed tokens, hostile room names,
//! hostile frames, floods, cross-site hijacking, slowloris, connection limits,
//! and secrets in logs.
//!
//! Every case asserts two things: the contract's error or close code for the
//! attacker, and what everybody else observes. A [`Bystander`] on the same edge
//! must get each of its room's events, in order, as the very next frame (so
//! nothing else leaked to it), and the attacker must receive nothing it is not
//! entitled to. Cases already covered elsewhere are not repeated here: wrong
//! key, missing `sub`, `nbf`, expired and garbage tokens (`tests/connect.rs`),
//! RS/ES keys, JWKS by `kid` and the connect hook (`tests/auth.rs`), the basic
//! bad-frame list, 1009 and the ping flood (`tests/requests.rs`). SECURITY.md
//! maps each threat to its test.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures::{SinkExt as _, StreamExt as _};
use herald_test_support::{
    Herald, HeraldBuilder, NatsServer, SECRET, WsClient, eventually, metric, now, publish, token,
    token_with, user_token,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// A connection in room `watch:1` that must keep receiving that room's events,
/// each as its very next frame, whatever the attacker does.
struct Bystander {
    c: WsClient,
    js: async_nats::jetstream::Context,
    n: u64,
}

impl Bystander {
    /// Connects with `token` (which must allow `watch:1`) and joins `watch:1`.
    async fn join(edge: &Herald, nats: &NatsServer, token: &str) -> Self {
        let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), token)
            .await
            .unwrap();
        assert_eq!(c.expect("joined").await.unwrap()["room"], "user:bystander");
        c.join(1, "watch:1").await.unwrap();
        let js = async_nats::jetstream::new(nats.client().await.unwrap());
        Self { c, js, n: 0 }
    }

    /// With the test's default token.
    async fn start(edge: &Herald, nats: &NatsServer) -> Self {
        Self::join(edge, nats, &user_token("bystander", &["watch:1"])).await
    }

    /// Publishes one event to `watch:1`; it must be the next frame, promptly.
    /// Returns how long it took.
    async fn still_receives(&mut self) -> Duration {
        self.n += 1;
        let t0 = Instant::now();
        let seq = publish(&self.js, "watch:1", "tick", json!({"n": self.n})).await;
        let v = self.c.recv_within(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (&v["type"], &v["room"], &v["seq"], &v["data"]["n"]),
            (
                &json!("event"),
                &json!("watch:1"),
                &json!(seq),
                &json!(self.n)
            ),
            "the bystander got {v}"
        );
        t0.elapsed()
    }
}

/// Reads a refused connection to its close: it must see no frame but the
/// `disconnect`, whose code must match the close code. Returns the code.
async fn refusal(c: &mut WsClient) -> u16 {
    let mut disconnect = None;
    loop {
        match c.recv().await {
            Ok(v) if v["type"] == "disconnect" => disconnect = Some(v),
            Ok(v) => panic!("a refused connection received {v}"),
            Err(_) => break,
        }
    }
    let code = c
        .closed
        .clone()
        .flatten()
        .map(|f| u16::from(f.code))
        .expect("a close frame");
    if let Some(d) = disconnect {
        assert_eq!(d["code"], code);
    }
    code
}

async fn refused_with(url: &str, token: &str) -> u16 {
    let mut c = WsClient::connect(url, token).await.unwrap();
    refusal(&mut c).await
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// Replaces one dot-separated part of a token.
fn with_part(token: &str, i: usize, part: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[i] = part.to_owned();
    parts.join(".")
}

const ISS: &str = "https://issuer.test";
const AUD: &str = "herald";

fn good_claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iss": ISS, "aud": AUD, "rooms": ["watch:1"]})
}

#[tokio::test]
async fn forged_and_malformed_tokens_close_4001_and_disturb_nobody() {
    let nats = NatsServer::start().unwrap();
    // An HS secret and an EC key together: the setting where algorithm
    // confusion would bite, with issuer and audience required.
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_AUTH__ES256_PUBLIC_KEY", &fixture("ec-public.pem"))
        .env("HERALD_AUTH__ISSUER", ISS)
        .env("HERALD_AUTH__AUDIENCE", AUD)
        .start()
        .unwrap();
    let mut bystander = Bystander::join(&edge, &nats, &token(good_claims("bystander"))).await;
    let url = edge.ws_url();

    let good = token(good_claims("6"));
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let ec_public_pem = std::fs::read(fixture("ec-public.pem")).unwrap();
    let claims = b64(&good_claims("6").to_string());
    // A key carried in the token itself (embedded `jwk`, `jku`) is never
    // trusted: the attacker signs with their own RSA key and ships it along.
    let jku_hits = Arc::new(AtomicUsize::new(0));
    let jku = serve_json(jwks_body(&["rsa-1"]), jku_hits.clone()).await;
    let mut h = Header::new(Algorithm::RS256);
    h.jku = Some(jku.clone());
    h.kid = Some("rsa-1".into());
    h.jwk = Some(serde_json::from_value(jwks_key("rsa-1")).unwrap());
    let embedded_key = encode(&h, &good_claims("6"), &rsa).unwrap();

    let mut cases: Vec<(String, &str)> = vec![
        (
            format!("{}.{claims}.", b64(r#"{"alg":"none","typ":"JWT"}"#)),
            "alg none",
        ),
        (
            format!("{}.{claims}.", b64(r#"{"alg":"None"}"#)),
            "alg None",
        ),
        (
            format!("{}.{claims}.", b64(r#"{"alg":"NONE"}"#)),
            "alg NONE",
        ),
        (
            with_part(&good, 0, &b64(r#"{"alg":"none"}"#)),
            "alg none keeping the HS signature",
        ),
        (
            encode(
                &Header::new(Algorithm::HS256),
                &good_claims("6"),
                &EncodingKey::from_secret(&ec_public_pem),
            )
            .unwrap(),
            "HS256 signed with the EC public key as secret",
        ),
        (
            with_part(&good, 0, &b64(r#"{"alg":"ES256","typ":"JWT"}"#)),
            "an HS signature under an ES256 header",
        ),
        (
            with_part(&good, 0, &b64(r#"{"alg":"HS999","typ":"JWT"}"#)),
            "an unknown algorithm",
        ),
        (
            with_part(&good, 0, &b64(r#"{"alg":"PS256","typ":"JWT"}"#)),
            "an algorithm with no configured key family",
        ),
        (embedded_key, "a key embedded in the token (jwk, jku)"),
        (
            token(json!({"sub":"6","exp":now()+600,"iss":"https://evil.test","aud":AUD})),
            "wrong iss",
        ),
        (
            token(json!({"sub":"6","exp":now()+600,"iss":ISS,"aud":"other"})),
            "wrong aud",
        ),
        (
            token(json!({"sub":"6","exp":now()+600,"iss":ISS,"aud":["other","x"]})),
            "wrong aud list",
        ),
        (
            token(json!({"sub":"6","exp":now()+600,"aud":AUD})),
            "missing iss",
        ),
        (
            token(json!({"sub":"6","exp":now()+600,"iss":ISS})),
            "missing aud",
        ),
        (
            token(json!({"sub":6,"exp":now()+600,"iss":ISS,"aud":AUD})),
            "numeric sub",
        ),
        (
            token(json!({"sub":"","exp":now()+600,"iss":ISS,"aud":AUD})),
            "empty sub",
        ),
        (
            token(json!({"sub":"x".repeat(257),"exp":now()+600,"iss":ISS,"aud":AUD})),
            "sub over 256 bytes",
        ),
        (
            token(json!({"sub":"6","exp":"9999999999","iss":ISS,"aud":AUD})),
            "exp as a string",
        ),
        (
            with_part(&good, 1, &b64(&good_claims("7").to_string())),
            "tampered sub",
        ),
        (
            with_part(
                &good,
                1,
                &b64(
                    &json!({"sub":"6","exp":now()+600,"iss":ISS,"aud":AUD,"rooms":["*"]})
                        .to_string(),
                ),
            ),
            "tampered rooms",
        ),
        (
            {
                let sig = good.rsplit('.').next().unwrap();
                let flipped = if sig.starts_with('A') { "B" } else { "A" };
                with_part(&good, 2, &format!("{flipped}{}", &sig[1..]))
            },
            "tampered signature",
        ),
        (with_part(&good, 2, ""), "signature removed"),
        (
            token(json!({"sub":"6","exp":now()+600,"iss":ISS,"aud":AUD,"pad":"x".repeat(9000)})),
            "oversized (over 8 KiB) but genuinely signed",
        ),
        (format!("{good}.{good}"), "two tokens glued"),
    ];
    cases.push((
        token_with("herald-test-secret-0123456789abcdeF", good_claims("6")),
        "a secret differing in one character",
    ));
    for (t, what) in &cases {
        assert_eq!(refused_with(&url, t).await, 4001, "{what}");
    }
    // The same oversized token in an auth frame.
    let mut c = WsClient::connect_with(&url, &[]).await.unwrap();
    c.send(json!({"type":"auth","token": cases[22].0}))
        .await
        .unwrap();
    assert_eq!(refusal(&mut c).await, 4001);
    assert_eq!(
        jku_hits.load(Ordering::SeqCst),
        0,
        "the edge fetched a jku URL"
    );
    // The genuine token works: the refusals were about the forgeries.
    let (mut ok, w) = WsClient::connect_welcomed(&url, &good).await.unwrap();
    assert_eq!(w["user"], "6");
    ok.send(json!({"type":"ping","id":1})).await.unwrap();
    bystander.still_receives().await;
    // Nothing leaked to the logs either.
    let logs = edge.logs().join("\n");
    for (t, what) in &cases {
        for part in t.split('.').filter(|p| p.len() >= 16) {
            assert!(!logs.contains(part), "{what}: a token part was logged");
        }
    }
}

/// One key of the fixture JWKS, by kid.
fn jwks_key(kid: &str) -> Value {
    let set: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .cloned()
        .unwrap()
}

fn jwks_body(kids: &[&str]) -> String {
    json!({"keys": kids.iter().map(|k| jwks_key(k)).collect::<Vec<_>>()}).to_string()
}

/// Serves `body` as JSON on every request, counting them; returns the URL.
async fn serve_json(body: String, hits: Arc<AtomicUsize>) -> String {
    let body = Arc::new(std::sync::Mutex::new(body));
    serve_mutable_json(body, hits).await
}

async fn serve_mutable_json(body: Arc<std::sync::Mutex<String>>, hits: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

fn signed(alg: Algorithm, kid: &str, key_file: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, &claims, &key).unwrap()
}

#[tokio::test]
async fn a_key_rotated_out_of_the_jwks_is_refused_after_the_refresh() {
    let nats = NatsServer::start().unwrap();
    let body = Arc::new(std::sync::Mutex::new(jwks_body(&["rsa-1", "ec-1"])));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = serve_mutable_json(body.clone(), hits.clone()).await;
    let edge = HeraldBuilder::new(&nats)
        .unset("HERALD_AUTH__HS256_SECRET")
        .env("HERALD_AUTH__JWKS_URL", &url)
        .env("HERALD_AUTH__JWKS_REFRESH_SECS", "1")
        .env("HERALD_AUTH__JWKS_MIN_REFRESH_SECS", "1")
        .start()
        .unwrap();
    let claims = |sub: &str| json!({"sub": sub, "exp": now() + 600, "rooms": ["watch:1"]});
    let by = signed(
        Algorithm::ES256,
        "ec-1",
        "ec-private.pem",
        claims("bystander"),
    );
    let mut bystander = Bystander::join(&edge, &nats, &by).await;
    let old = signed(Algorithm::RS256, "rsa-1", "rsa-private.pem", claims("6"));
    let (_before, _) = WsClient::connect_welcomed(&edge.ws_url(), &old)
        .await
        .unwrap();
    // The identity provider rotates rsa-1 out (say it leaked).
    *body.lock().unwrap() = jwks_body(&["ec-1"]);
    let t0 = Instant::now();
    loop {
        let mut c = WsClient::connect(&edge.ws_url(), &old).await.unwrap();
        match c.recv().await {
            Ok(v) if v["type"] == "welcome" => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "the rotated-out key is still accepted after 10 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(v) => {
                assert_eq!(
                    (&v["type"], &v["code"]),
                    (&json!("disconnect"), &json!(4001))
                );
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The key that stayed still works, and the bystander never noticed.
    let (_ec, _) = WsClient::connect_welcomed(
        &edge.ws_url(),
        &signed(Algorithm::ES256, "ec-1", "ec-private.pem", claims("e")),
    )
    .await
    .unwrap();
    bystander.still_receives().await;
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_edge_hammer_the_jwks_url() {
    let nats = NatsServer::start().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let url = serve_json(jwks_body(&["rsa-1", "ec-1"]), hits.clone()).await;
    let edge = HeraldBuilder::new(&nats)
        .unset("HERALD_AUTH__HS256_SECRET")
        .env("HERALD_AUTH__JWKS_URL", &url)
        .env("HERALD_AUTH__JWKS_MIN_REFRESH_SECS", "60")
        .start()
        .unwrap();
    let claims = json!({"sub": "6", "exp": now() + 600});
    eventually(Duration::from_secs(5), "the first JWKS fetch", || {
        let n = hits.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    for i in 0..30 {
        let t = signed(
            Algorithm::RS256,
            &format!("forged-{i}"),
            "rsa-private.pem",
            claims.clone(),
        );
        assert_eq!(refused_with(&edge.ws_url(), &t).await, 4001);
    }
    // The initial fetch plus at most one for the unknown kids.
    assert!(
        hits.load(Ordering::SeqCst) <= 2,
        "{} JWKS fetches",
        hits.load(Ordering::SeqCst)
    );
}

/// Every way to smuggle a NATS metacharacter into a room name: `.`, `*`, `>`
/// and whitespace at each position of `channel:42`.
fn hostile_rooms() -> Vec<String> {
    let base = "channel:42";
    let mut out = Vec::new();
    for meta in [".", "*", ">", " ", "\t", "\n", "\0"] {
        for i in 0..=base.len() {
            out.push(format!("{}{meta}{}", &base[..i], &base[i..]));
        }
        out.push(format!("channel:{meta}"));
        out.push(format!("{meta}:42"));
        out.push(meta.to_owned());
    }
    out.extend(
        [
            "channel:4.*",
            "channel.>",
            "*:*",
            ">:>",
            "channel:42.>",
            "channel:",
            ":42",
            "channel::42",
            "channel:4:2",
            "",
            // Unicode look-alikes of letters, digits, the colon and the dot.
            "chаnnel:42",         // Cyrillic а
            "channel:４２",       // fullwidth digits
            "channel：42",        // fullwidth colon
            "channel∶42",         // ratio sign
            "channel:4\u{2024}2", // one dot leader
            "channel:42\u{200b}", // zero-width space
            "\u{feff}channel:42", // BOM
            "channel:4\u{ff0e}2", // fullwidth full stop
            "ｃhannel:42",        // fullwidth c
            "channel:\u{212a}",   // Kelvin sign
            "channel:42\u{0301}", // combining accent
        ]
        .map(str::to_owned),
    );
    out.push(format!("{}:1", "k".repeat(33)));
    out.push(format!("channel:{}", "x".repeat(129)));
    out.push(format!("user:={}", "A".repeat(400)));
    out
}

#[tokio::test]
async fn hostile_room_names_are_invalid_and_subscribe_to_nothing() {
    let nats = NatsServer::start().unwrap();
    // Hundreds of requests: lift the rate limit so each gets its own answer.
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__REQUESTS_PER_SEC", "100000")
        .env("HERALD_LIMITS__REQUEST_BURST", "100000")
        .start()
        .unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    // The attacker's token allows every room and every publish: only the name
    // rules stand between `channel:*` and every channel's events.
    let t = token(json!({"sub":"6","exp":now()+600,"rooms":["*"],"publish":["*"]}));
    let (mut a, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    a.expect("joined").await.unwrap();
    let rooms = hostile_rooms();
    for (i, room) in rooms.iter().enumerate() {
        let id = i as i64;
        for frame in [
            json!({"type":"join","id":id,"room":room}),
            json!({"type":"publish","id":id,"room":room,"event":"x","data":{}}),
            json!({"type":"history","id":id,"room":room}),
            json!({"type":"leave","id":id,"room":room}),
        ] {
            a.send(frame.clone()).await.unwrap();
            let e = a.expect("error").await.unwrap();
            assert_eq!(
                (&e["id"], &e["code"]),
                (&json!(id), &json!("invalid_room")),
                "{frame}"
            );
        }
    }
    // Events of real rooms, including the bystander's, never reach the
    // attacker: no wildcard subscription was ever made for it.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    publish(&js, "channel:42", "secret", json!({"x": 1})).await;
    publish(&js, "channel:4", "secret", json!({"x": 2})).await;
    bystander.still_receives().await;
    a.silent_for(Duration::from_millis(800)).await.unwrap();
    assert_eq!(metric(&edge, "herald_rooms").await, 3.0); // user:6, user:bystander, watch:1
}

#[tokio::test]
async fn another_users_private_room_is_closed_whatever_the_spelling_or_claim() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let (mut victim, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("7", &[]))
        .await
        .unwrap();
    victim.expect("joined").await.unwrap();
    // Every claim that could be read as granting user:7 or user:a@b.io.
    let t = token(json!({
        "sub":"6","exp":now()+600,
        "rooms":["*","user:*","user:7","user:=YUBiLmlv"],
        "publish":["*","user:*"],
        "join":["user:7","user:=YUBiLmlv"],
    }));
    let (mut a, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    // Only its own room was joined at connect; each foreign room of the
    // `join` claim was refused (an error without an id).
    assert_eq!(a.expect("joined").await.unwrap()["room"], "user:6");
    for _ in 0..2 {
        let e = a.expect("error").await.unwrap();
        assert_eq!((&e["id"], &e["code"]), (&Value::Null, &json!("forbidden")));
    }
    for (room, code) in [
        ("user:7", "forbidden"),
        ("user:=YUBiLmlv", "forbidden"), // a@b.io
        ("user:=Nw", "invalid_room"),    // "7" escaped: not the canonical spelling
        ("user:=Nw==", "invalid_room"),
        ("user:=Nx", "invalid_room"), // non-canonical trailing bits
        ("user:7 ", "invalid_room"),
    ] {
        for ty in ["join", "history"] {
            a.send(json!({"type":ty,"id":1,"room":room})).await.unwrap();
            let e = a.expect("error").await.unwrap();
            assert_eq!(e["code"], code, "{ty} {room}");
        }
        a.send(json!({"type":"publish","id":2,"room":room,"event":"x","data":{}}))
            .await
            .unwrap();
        assert_eq!(
            a.expect("error").await.unwrap()["code"],
            code,
            "publish {room}"
        );
    }
    // The victim's own events reach the victim only.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let seq = publish(&js, "user:7", "dm", json!({"private": true})).await;
    let e = victim.expect("event").await.unwrap();
    assert_eq!((&e["room"], &e["seq"]), (&json!("user:7"), &json!(seq)));
    a.silent_for(Duration::from_millis(800)).await.unwrap();
    victim.silent_for(Duration::from_millis(100)).await.unwrap();
    bystander.still_receives().await;
}

#[tokio::test]
async fn a_denying_broken_or_absent_authorizer_never_lets_anyone_in() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_AUTHZ__TIMEOUT_MS", "500")
        .start()
        .unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let (mut a, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &[]))
        .await
        .unwrap();
    a.expect("joined").await.unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let mut id = 0;
    let mut try_join = async |a: &mut WsClient, room: &str| -> Value {
        id += 1;
        a.send(json!({"type":"join","id":id,"room":room}))
            .await
            .unwrap();
        a.recv().await.unwrap()
    };
    // Down: nobody listens on the subject.
    let e = try_join(&mut a, "team:down").await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("forbidden"))
    );

    // Up, with answers of every shape; only {"allow":true} lets in.
    let svc = nats.client().await.unwrap();
    let mut sub = svc.subscribe("herald.authz.join").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    let answering = svc.clone();
    let authorizer = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let req: Value = serde_json::from_slice(&m.payload).unwrap();
            let answer: &[u8] = match req["room"].as_str().unwrap() {
                "team:ok" => br#"{"allow":true}"#,
                "team:no" => br#"{"allow":false}"#,
                "team:string" => br#"{"allow":"true"}"#,
                "team:number" => br#"{"allow":1}"#,
                "team:array" => br#"[true]"#,
                "team:empty" => b"",
                "team:garbage" => b"\xff\xfe not json",
                "team:null" => b"null",
                _ => continue, // silent
            };
            answering
                .publish(m.reply.unwrap(), answer.to_vec().into())
                .await
                .unwrap();
        }
    });
    for room in [
        "team:no",
        "team:string",
        "team:number",
        "team:array",
        "team:empty",
        "team:garbage",
        "team:null",
    ] {
        let e = try_join(&mut a, room).await;
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!("forbidden")),
            "{room}"
        );
    }
    let e = try_join(&mut a, "team:silent").await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("unavailable"))
    );
    // The positive control: the same path does let a member in.
    let ok = try_join(&mut a, "team:ok").await;
    assert_eq!(ok["type"], "joined");
    // The authorizer crashes: refused again, never allowed by default.
    authorizer.abort();
    drop(svc);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = try_join(&mut a, "team:after-crash").await;
    assert_eq!(e["type"], "error");
    assert!(
        e["code"] == "forbidden" || e["code"] == "unavailable",
        "{e}"
    );
    // Events of the refused rooms never arrive; the allowed room's do.
    for room in [
        "team:no",
        "team:string",
        "team:silent",
        "team:down",
        "team:after-crash",
    ] {
        publish(&js, room, "secret", json!({})).await;
    }
    let seq = publish(&js, "team:ok", "hello", json!({})).await;
    let e = a.expect("event").await.unwrap();
    assert_eq!((&e["room"], &e["seq"]), (&json!("team:ok"), &json!(seq)));
    a.silent_for(Duration::from_millis(500)).await.unwrap();
    bystander.still_receives().await;
}

/// Sends a text frame whose payload is not UTF-8 (tungstenite's `Message`
/// will not build one, so the frame is made by hand).
async fn send_invalid_utf8(url: &str, token: &str) -> Option<u16> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}"))
        .await
        .unwrap();
    // welcome, joined
    for _ in 0..2 {
        ws.next().await.unwrap().unwrap();
    }
    let frame = Frame::message(
        &b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}"[..],
        OpCode::Data(Data::Text),
        true,
    );
    ws.send(Message::Frame(frame)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return None,
            Err(_) => panic!("the connection stayed open after invalid UTF-8"),
        }
    }
}

#[tokio::test]
async fn hostile_frames_get_their_codes_and_disturb_nobody() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let t = user_token("6", &["channel:*"]);
    let (mut a, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    a.expect("joined").await.unwrap();
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<(String, Option<i64>)> = vec![
        // Deep nesting, in `data` and in fields that take no nesting at all.
        (
            format!(
                r#"{{"type":"emit","id":1,"event":"x","data":{}}}"#,
                deep(30_000)
            ),
            Some(1),
        ),
        (
            format!(
                r#"{{"type":"emit","id":2,"event":"x","data":{{"a":{}}}}}"#,
                deep(65)
            ),
            Some(2),
        ),
        (
            format!(
                r#"{{"type":"join","id":3,"room":"channel:1","since":{}}}"#,
                deep(10_000)
            ),
            Some(3),
        ),
        (deep(30_000), None),
        // Huge numbers wherever a number goes.
        (r#"{"type":"ping","id":1e400}"#.into(), None),
        (r#"{"type":"ping","id":99999999999999999999}"#.into(), None),
        (r#"{"type":"ping","id":-99999999999999999999}"#.into(), None),
        (r#"{"type":"ping","id":1.5}"#.into(), None),
        (
            r#"{"type":"join","id":5,"room":"channel:1","since":{"epoch":"e","seq":1e30}}"#.into(),
            Some(5),
        ),
        (
            r#"{"type":"join","id":6,"room":"channel:1","since":{"epoch":"e","seq":-1}}"#.into(),
            Some(6),
        ),
        (
            r#"{"type":"history","id":7,"room":"channel:1","limit":1e400}"#.into(),
            Some(7),
        ),
        (
            format!(
                r#"{{"type":"emit","id":8,"event":"x","data":[1{}]}}"#,
                "0".repeat(400)
            ),
            Some(8),
        ),
        (
            r#"{"type":"emit","id":9,"event":"x","data":{"n":-1E+999}}"#.into(),
            Some(9),
        ),
        // Strings that are not what they claim.
        (
            r#"{"type":"join","id":10,"room":"channel:\ud800"}"#.into(),
            Some(10),
        ),
        (
            r#"{"type":"emit","id":17,"event":"x","data":{"s":"\udc00"}}"#.into(),
            Some(17),
        ),
        (
            r#"{"type":"emit","id":12,"event":"a.>","data":{}}"#.into(),
            Some(12),
        ),
        (
            r#"{"type":"emit","id":13,"event":"a..b","data":{}}"#.into(),
            Some(13),
        ),
        (
            r#"{"type":"emit","id":14,"event":"*","data":{}}"#.into(),
            Some(14),
        ),
        (
            r#"{"type":"emit","id":15,"event":"x","data":{}} trailing"#.into(),
            None,
        ),
        (
            r#"{"type":"join","type":"emit","id":16,"room":"channel:1"}"#.into(),
            Some(16),
        ),
        (
            format!(r#"{{"type":"join","id":"{}"}}"#, "A".repeat(50_000)),
            None,
        ),
    ];
    for (frame, id) in &cases {
        a.send_text(frame).await.unwrap();
        let e = a.expect("error").await.unwrap();
        let short: String = frame.chars().take(80).collect();
        assert_eq!(e["code"], "bad_request", "{short}");
        assert_eq!(e["id"].as_i64(), *id, "{short}");
        assert!(
            e["message"].as_str().unwrap().len() <= 256,
            "{short}: the error echoes the input"
        );
    }
    // An escaped wildcard is still a wildcard.
    a.send_text(r#"{"type":"join","id":11,"room":"channel:\u002a"}"#)
        .await
        .unwrap();
    assert_eq!(a.expect("error").await.unwrap()["code"], "invalid_room");
    // Unknown fields are skipped without recursion, however deep.
    a.send_text(&format!(r#"{{"type":"ping","id":4,"x":{}}}"#, deep(30_000)))
        .await
        .unwrap();
    assert_eq!(a.expect("pong").await.unwrap()["id"], 4);
    // Answered; the connection is still fine and the decoder did not choke.
    a.send(json!({"type":"join","id":20,"room":"channel:1","since":{"epoch":"e","seq":u64::MAX}}))
        .await
        .unwrap();
    assert_eq!(a.expect("joined").await.unwrap()["recovered"], false);
    a.send(json!({"type":"history","id":21,"room":"channel:1","limit":u64::MAX}))
        .await
        .unwrap();
    assert_eq!(a.expect("history").await.unwrap()["id"], 21);
    bystander.still_receives().await;

    // Invalid UTF-8 in a text frame fails the WebSocket connection (RFC 6455
    // §8.1) with 1007; the bystander does not notice.
    assert_eq!(send_invalid_utf8(&edge.ws_url(), &t).await, Some(1007));
    bystander.still_receives().await;
    a.send(json!({"type":"ping","id":22})).await.unwrap();
    assert_eq!(a.expect("pong").await.unwrap()["id"], 22);
}

#[tokio::test]
async fn a_binary_flood_is_rate_limited_then_closed_4029() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__REQUESTS_PER_SEC", "5")
        .env("HERALD_LIMITS__REQUEST_BURST", "5")
        .env("HERALD_LIMITS__RATE_LIMIT_CLOSE_AFTER", "20")
        .start()
        .unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let (mut a, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &[]))
        .await
        .unwrap();
    for _ in 0..60 {
        if a.send_raw(Message::Binary(vec![0xff; 4000].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (mut bad_request, mut limited) = (0, 0);
    let code = loop {
        match a.recv().await {
            Ok(v) if v["type"] == "error" && v["code"] == "bad_request" => bad_request += 1,
            Ok(v) if v["type"] == "error" && v["code"] == "rate_limited" => limited += 1,
            Ok(v) if v["type"] == "joined" || v["type"] == "disconnect" => {}
            Ok(v) => panic!("unexpected {v}"),
            Err(_) => break a.closed.clone().flatten().map(|f| u16::from(f.code)),
        }
    };
    assert_eq!(code, Some(4029));
    assert!((5..=8).contains(&bad_request), "{bad_request}");
    assert!(limited >= 1);
    bystander.still_receives().await;
}

/// Counts an attacker's answers by type (and error code).
#[derive(Default, Debug)]
struct Tally {
    joined: usize,
    rate_limited: usize,
    too_large: usize,
    other_errors: usize,
    replies: usize,
    closed: Option<u16>,
}

// The attackers run on their own threads so that the test's own scheduling
// does not stand in for the edge's.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_flooding_connection_does_not_slow_down_anyone_else() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__RATE_LIMIT_CLOSE_AFTER", "1000000")
        .env("HERALD_LIMITS__MAX_ROOMS_PER_CONN", "20")
        .env("HERALD_LIMITS__MAX_INFLIGHT_REQUESTS", "4")
        .env("HERALD_RPC__TIMEOUT_MS", "1000")
        .start()
        .unwrap();
    let pid = edge.pid().unwrap();
    // A service that takes every `slow` request and never answers.
    let svc = nats.client().await.unwrap();
    let _sink = svc.subscribe("herald.rpc.slow").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let mut baseline = Duration::ZERO;
    for _ in 0..5 {
        baseline = baseline.max(bystander.still_receives().await);
    }
    let rss_before = rss_kib(pid);

    // Two attackers flood joins of distinct rooms, emits to the silent
    // service, publishes they may not make, garbage and near-limit frames, as
    // fast as the socket takes them, reading everything they get back.
    let t = user_token("6", &["flood:*"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={t}", edge.ws_url()))
            .await
            .unwrap();
        let (mut tx, mut rx) = ws.split();
        let stop = stop.clone();
        let writer = tokio::spawn(async move {
            let big = format!(
                r#"{{"type":"emit","id":0,"event":"x","data":"{}"}}"#,
                "y".repeat(60_000)
            );
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let f = match i % 5 {
                    0 => json!({"type":"join","id":i,"room":format!("flood:{i}")}).to_string(),
                    1 => json!({"type":"emit","id":i,"event":"slow","data":{"i":i}}).to_string(),
                    2 => json!({"type":"publish","id":i,"room":"watch:1","event":"spam","data":{}})
                        .to_string(),
                    3 => big.clone(),
                    _ => "garbage".to_string(),
                };
                if tx.send(Message::Text(f.into())).await.is_err() {
                    break;
                }
            }
            let _ = tx.close().await;
        });
        let reader = tokio::spawn(async move {
            let mut t = Tally::default();
            while let Some(m) = rx.next().await {
                match m {
                    Ok(Message::Text(s)) => {
                        let v: Value = serde_json::from_str(&s).unwrap();
                        match (v["type"].as_str().unwrap(), v["code"].as_str()) {
                            ("joined", _) => t.joined += 1,
                            ("error", Some("rate_limited")) => t.rate_limited += 1,
                            ("error", Some("too_large")) => t.too_large += 1,
                            ("error", _) => t.other_errors += 1,
                            ("reply", _) => t.replies += 1,
                            ("event", _) => panic!("an attacker received an event: {v}"),
                            _ => {}
                        }
                    }
                    Ok(Message::Close(f)) => {
                        t.closed = f.map(|f| u16::from(f.code));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            t
        });
        attackers.push((writer, reader));
    }
    // Meanwhile the bystander's events keep flowing, in order, promptly.
    let mut worst = Duration::ZERO;
    let flood_started = Instant::now();
    while flood_started.elapsed() < Duration::from_secs(4) {
        worst = worst.max(bystander.still_receives().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A newcomer is served promptly too.
    let t0 = Instant::now();
    let (mut newcomer, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("8", &[]))
        .await
        .unwrap();
    newcomer.send(json!({"type":"ping","id":1})).await.unwrap();
    newcomer.expect("joined").await.unwrap();
    newcomer.expect("pong").await.unwrap();
    let newcomer_took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    for (w, r) in attackers {
        w.await.unwrap();
        tallies.push(
            tokio::time::timeout(Duration::from_secs(15), r)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    eprintln!(
        "flood: bystander worst {worst:?} (baseline {baseline:?}), newcomer {newcomer_took:?}, \
         attackers {tallies:?}, RSS {rss_before} KiB -> {} KiB",
        rss_kib(pid)
    );
    assert!(
        worst < Duration::from_secs(2),
        "an event took {worst:?} under the flood"
    );
    assert!(
        newcomer_took < Duration::from_secs(2),
        "connecting took {newcomer_took:?}"
    );
    for t in &tallies {
        // Rooms are capped (the user room is one of the 20), and the rate
        // limit did the refusing.
        assert!(t.joined <= 20, "{t:?}");
        assert!(t.rate_limited > 0, "{t:?}");
        assert!(t.closed.is_none() || t.closed == Some(4008), "{t:?}");
    }
    // Memory stays bounded; and once the attackers are gone, so is their state.
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 100 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    eventually(
        Duration::from_secs(10),
        "the attackers' rooms to be released",
        || async {
            metric(&edge, "herald_rooms").await <= 4.0 // user:bystander, watch:1, user:8 (+ one leaving)
        },
    )
    .await;
    bystander.still_receives().await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn cookie_auth_from_a_foreign_origin_never_becomes_a_session() {
    let nats = NatsServer::start().unwrap();
    // No allow-list: same-origin browser requests only (the default).
    let same_origin = Herald::start(&nats).unwrap();
    let listed = HeraldBuilder::new(&nats)
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .start()
        .unwrap();
    let mut bystander = Bystander::start(&listed, &nats).await;
    // The victim's own tab, on the allowed origin, with the cookie.
    let cookie = format!("auth_token={}", user_token("victim", &[]));
    let mut victim = WsClient::connect_with(
        &listed.ws_url(),
        &[("cookie", &cookie), ("origin", "https://app.example")],
    )
    .await
    .unwrap();
    victim.expect("welcome").await.unwrap();
    victim.expect("joined").await.unwrap();
    // A page elsewhere opens sockets that carry the victim's cookie.
    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "https://evilapp.example",
        "http://app.example",
        "https://app.example:8443",
        "https://app.example/",
        "null",
        "",
    ] {
        let mut c =
            WsClient::connect_with(&listed.ws_url(), &[("cookie", &cookie), ("origin", origin)])
                .await
                .unwrap();
        assert_eq!(refusal(&mut c).await, 1008, "origin {origin:?}");
    }
    let host = same_origin.addr().to_string();
    for origin in [
        "https://evil.example",
        "null",
        &format!("http://{host}.evil.example"),
    ] {
        let mut c = WsClient::connect_with(
            &same_origin.ws_url(),
            &[("cookie", &cookie), ("origin", origin)],
        )
        .await
        .unwrap();
        assert_eq!(
            refusal(&mut c).await,
            1008,
            "same-origin edge, origin {origin:?}"
        );
    }
    // The real same-origin page is allowed.
    let mut own = WsClient::connect_with(
        &same_origin.ws_url(),
        &[("cookie", &cookie), ("origin", &format!("http://{host}"))],
    )
    .await
    .unwrap();
    own.expect("welcome").await.unwrap();
    // The victim's events went to the victim's tab only.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let seq = publish(&js, "user:victim", "dm", json!({})).await;
    assert_eq!(victim.expect("event").await.unwrap()["seq"], seq);
    bystander.still_receives().await;
}

#[tokio::test]
async fn slowloris_handshakes_are_cut_off_and_hold_nothing() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_TIMEOUTS__HANDSHAKE_MS", "1000")
        .env("HERALD_AUTH__AUTH_TIMEOUT_MS", "1000")
        .start()
        .unwrap();
    let pid = edge.pid().unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let fds_before = open_fds(pid);
    // 40 sockets: half say nothing, half trickle an upgrade request a byte at
    // a time and never finish it.
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Slow: ",
        user_token("slow", &[]),
        edge.addr()
    );
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = edge.addr();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 1024];
            let mut bytes = request.bytes().chain(std::iter::repeat(b'a'));
            loop {
                if i % 2 == 1 {
                    let b = bytes.next().unwrap();
                    if s.write_all(&[b]).await.is_err() {
                        return started.elapsed();
                    }
                }
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return started.elapsed(),
                    Ok(Ok(_)) => {} // a 408 or similar, then the close
                    Err(_) => {}
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "still open after 15 s"
                );
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(open_fds(pid) >= fds_before + 40, "the sockets are open");
    // While they hang, real clients connect and receive as usual.
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("6", &[]))
        .await
        .unwrap();
    c.expect("joined").await.unwrap();
    bystander.still_receives().await;
    for t in tasks {
        let took = t.await.unwrap();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(4),
            "a slow handshake was closed after {took:?}"
        );
    }
    eprintln!("all 40 slow sockets closed within {:?}", t0.elapsed());
    // Their file descriptors (and tasks) are gone.
    eventually(
        Duration::from_secs(5),
        "the slow sockets' descriptors to close",
        || async { open_fds(pid) <= fds_before + 2 },
    )
    .await;

    // The same at the WebSocket level: an upgraded socket that sends pings but
    // never its auth frame is closed at the auth timeout, not kept alive.
    let mut ws = WsClient::connect_with(&edge.ws_url(), &[]).await.unwrap();
    let t0 = Instant::now();
    let closed = loop {
        ws.send_raw(Message::Ping(vec![1].into())).await.ok();
        match ws.recv_within(Duration::from_millis(300)).await {
            Ok(v) if v["type"] == "disconnect" => {
                assert_eq!(v["code"], 4001);
                break t0.elapsed();
            }
            Ok(v) => panic!("{v}"),
            Err(e) if e.to_string().starts_with("no frame") => {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "pings kept an unauthenticated socket open"
                );
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(closed < Duration::from_millis(2500), "{closed:?}");
    bystander.still_receives().await;
}

#[tokio::test]
async fn closed_connections_release_their_sockets_at_once() {
    // Connection churn must not pile up sockets: each one closed by its client
    // is gone in well under the drain timeout (it used to linger 10 s).
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let pid = edge.pid().unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let base = open_fds(pid);
    let mut conns = Vec::new();
    for i in 0..20 {
        let t = user_token(&format!("churn-{i}"), &[]);
        conns.push(
            WsClient::connect_welcomed(&edge.ws_url(), &t)
                .await
                .unwrap()
                .0,
        );
    }
    assert!(open_fds(pid) >= base + 20);
    for c in conns {
        c.close().await;
    }
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(3),
        "closed sockets to be released",
        || async { open_fds(pid) <= base + 1 },
    )
    .await;
    eprintln!("20 closed connections released in {:?}", t0.elapsed());
    bystander.still_receives().await;
}

#[tokio::test]
async fn connections_beyond_the_per_user_limit_are_refused_without_side_effects() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__MAX_CONNS_PER_USER", "2")
        .start()
        .unwrap();
    let mut bystander = Bystander::start(&edge, &nats).await;
    let t = user_token("6", &[]);
    let mut mine = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
            .await
            .unwrap();
        c.expect("joined").await.unwrap();
        mine.push(c);
    }
    // Twenty attempts beyond the limit, at once.
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let url = edge.ws_url();
            let t = t.clone();
            tokio::spawn(async move { refused_with(&url, &t).await })
        })
        .collect();
    for a in attempts {
        assert_eq!(a.await.unwrap(), 4029);
    }
    // The two admitted connections each get the user's events exactly once.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let seq = publish(&js, "user:6", "dm", json!({})).await;
    for c in &mut mine {
        assert_eq!(c.expect("event").await.unwrap()["seq"], seq);
        c.silent_for(Duration::from_millis(200)).await.unwrap();
    }
    assert_eq!(metric(&edge, "herald_connections").await, 3.0);
    // Refusals left nothing registered: closing one frees exactly one slot.
    mine.pop().unwrap().close().await;
    eventually(
        Duration::from_secs(5),
        "the closed connection to unregister",
        || async { metric(&edge, "herald_connections").await == 2.0 },
    )
    .await;
    let (_again, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    assert_eq!(refused_with(&edge.ws_url(), &t).await, 4029);
    bystander.still_receives().await;
}

#[tokio::test]
async fn tokens_cookies_and_secrets_never_reach_the_logs_even_at_trace_level() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LOG__LEVEL", "trace")
        .start()
        .unwrap();
    let url = edge.ws_url();
    let mut secrets: Vec<String> = vec![SECRET.to_owned()];
    // A good token and bad ones, through every source.
    let good = user_token("6", &[]);
    let bad = token_with("another-secret-0123456789abcdef", json!({"sub":"6"}));
    let expired = token(json!({"sub":"6","exp": now() - 600}));
    secrets.extend([good.clone(), bad.clone(), expired.clone()]);
    let (mut c, _) = WsClient::connect_welcomed(&url, &good).await.unwrap();
    c.expect("joined").await.unwrap();
    assert_eq!(refused_with(&url, &bad).await, 4001);
    assert_eq!(refused_with(&url, &expired).await, 4002);
    let mut h = WsClient::connect_with(&url, &[("authorization", &format!("Bearer {bad}"))])
        .await
        .unwrap();
    assert_eq!(refusal(&mut h).await, 4001);
    let mut k = WsClient::connect_with(
        &url,
        &[(
            "cookie",
            &format!("session=s3cr3t-cookie-value-1234; auth_token={bad}"),
        )],
    )
    .await
    .unwrap();
    secrets.push("s3cr3t-cookie-value-1234".into());
    assert_eq!(refusal(&mut k).await, 4001);
    let mut f = WsClient::connect_with(&url, &[]).await.unwrap();
    f.send(json!({"type":"auth","token": bad})).await.unwrap();
    assert_eq!(refusal(&mut f).await, 4001);
    // A refresh with a bad token, then a good one.
    let fresh = user_token("6", &["x:1"]);
    secrets.push(fresh.clone());
    c.send(json!({"type":"refresh","id":1,"token": bad}))
        .await
        .unwrap();
    assert_eq!(c.expect("error").await.unwrap()["code"], "forbidden");
    c.send(json!({"type":"refresh","id":2,"token": fresh}))
        .await
        .unwrap();
    c.expect("reply").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = edge.logs().join("\n");
    assert!(logs.lines().count() > 20, "trace logging is on");

    for s in &secrets {
        for part in s.split('.').filter(|p| p.len() >= 16) {
            assert!(!logs.contains(part), "a secret was logged: {part}");
        }
    }
}

#[tokio::test]
async fn connect_hook_credentials_never_reach_the_logs() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .unset("HERALD_AUTH__HS256_SECRET")
        .env("HERALD_AUTH__CONNECT_HOOK", "true")
        .env("HERALD_AUTH__CONNECT_HOOK_TIMEOUT_MS", "500")
        .env("HERALD_LOG__LEVEL", "trace")
        .start()
        .unwrap();
    let svc = nats.client().await.unwrap();
    let mut sub = svc.subscribe("herald.authn.connect").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let req: Value = serde_json::from_slice(&m.payload).unwrap();
            let answer = match req["credentials"].as_str().unwrap() {
                "opaque-session-good-0123456789" => json!({"user": "u-1"}),
                _ => json!({"error": "unknown session"}),
            };
            svc.publish(m.reply.unwrap(), answer.to_string().into())
                .await
                .unwrap();
        }
    });
    let url = edge.ws_url();
    let mut ok = WsClient::connect_with(
        &url,
        &[("cookie", "auth_token=opaque-session-good-0123456789")],
    )
    .await
    .unwrap();
    ok.expect("welcome").await.unwrap();
    let mut no = WsClient::connect_with(
        &url,
        &[("cookie", "auth_token=opaque-session-bad-9876543210")],
    )
    .await
    .unwrap();
    assert_eq!(refusal(&mut no).await, 4001);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = edge.logs().join("\n");
    for s in [
        "opaque-session-good-0123456789",
        "opaque-session-bad-9876543210",
    ] {
        assert!(!logs.contains(s), "connect hook credentials were logged");
    }
}
