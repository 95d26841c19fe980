//! Token keys beyond the shared secret (RS256, ES256, JWKS), algorithm
//! confusion, and the connect hook.
#![allow(clippy::unwrap_used)]

use futures::StreamExt as _;
use herald_test_support::{HeraldBuilder, NatsServer, WsClient, now};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, sub: &str) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, &json!({"sub": sub, "exp": now() + 600}), key).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap()
}

async fn close_code(url: &str, token: &str) -> Option<u16> {
    let mut c = WsClient::connect(url, token).await.unwrap();
    match c.recv().await {
        Ok(v) if v["type"] == "welcome" => None,
        _ => Some(c.expect_close().await.map(|(_, code)| code).unwrap_or(0)),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_checked_against_configured_public_keys() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .unset("HERALD_AUTH__HS256_SECRET")
        .env("HERALD_AUTH__RS256_PUBLIC_KEY", &fixture("rsa-public.pem"))
        .env("HERALD_AUTH__ES256_PUBLIC_KEY", &fixture("ec-public.pem"))
        .start()
        .unwrap();
    assert_eq!(
        close_code(
            &edge.ws_url(),
            &sign(Algorithm::RS256, None, &rsa_key(), "r")
        )
        .await,
        None
    );
    assert_eq!(
        close_code(
            &edge.ws_url(),
            &sign(Algorithm::ES256, None, &ec_key(), "e")
        )
        .await,
        None
    );
    // Algorithm confusion: an HS256 token whose "secret" is the RSA public key.
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&public_pem),
        "x",
    );
    assert_eq!(close_code(&edge.ws_url(), &confused).await, Some(4001));
    // An RS256 header on an ES256 signature, and vice versa.
    let es = sign(Algorithm::ES256, None, &ec_key(), "x");
    let (_, rest) = es.split_once('.').unwrap();
    let rs_header = base64_url(r#"{"alg":"RS256","typ":"JWT"}"#);
    assert_eq!(
        close_code(&edge.ws_url(), &format!("{rs_header}.{rest}")).await,
        Some(4001)
    );
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// Serves `body` as JSON to every request on a free port; returns the URL.
async fn serve_json(body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
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

#[tokio::test]
async fn jwks_keys_are_chosen_by_kid_and_a_rotated_out_key_is_refused() {
    let nats = NatsServer::start().unwrap();
    let url = serve_json(std::fs::read_to_string(fixture("jwks.json")).unwrap()).await;
    let edge = HeraldBuilder::new(&nats)
        .unset("HERALD_AUTH__HS256_SECRET")
        .env("HERALD_AUTH__JWKS_URL", &url)
        .start()
        .unwrap();
    assert_eq!(
        close_code(
            &edge.ws_url(),
            &sign(Algorithm::RS256, Some("rsa-1"), &rsa_key(), "r")
        )
        .await,
        None
    );
    assert_eq!(
        close_code(
            &edge.ws_url(),
            &sign(Algorithm::ES256, Some("ec-1"), &ec_key(), "e")
        )
        .await,
        None
    );
    // The right key under a kid that is no longer published.
    assert_eq!(
        close_code(
            &edge.ws_url(),
            &sign(Algorithm::RS256, Some("rsa-0"), &rsa_key(), "r")
        )
        .await,
        Some(4001)
    );
    // A kid naming a key of the other algorithm.
    assert_eq!(
        close_code(
            &edge.ws_url(),
            &sign(Algorithm::ES256, Some("rsa-1"), &ec_key(), "r")
        )
        .await,
        Some(4001)
    );
}

#[tokio::test]
async fn the_connect_hook_decides_and_a_silent_hook_means_1013() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .unset("HERALD_AUTH__HS256_SECRET")
        .env("HERALD_AUTH__CONNECT_HOOK", "true")
        .env("HERALD_AUTH__CONNECT_HOOK_TIMEOUT_MS", "500")
        .start()
        .unwrap();
    // Nobody answers yet: try again later, not unauthorized.
    assert_eq!(close_code(&edge.ws_url(), "session-abc").await, Some(1013));
    let svc = nats.client().await.unwrap();
    let mut sub = svc.subscribe("herald.authn.connect").await.unwrap();
    herald_publish::round_trip(&svc).await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let req: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let answer = match req["credentials"].as_str().unwrap() {
                "session-abc" => {
                    json!({"user": "u-1", "join": ["team:7"], "info": {"name": "Ann"}})
                }
                _ => json!({"error": "unknown session"}),
            };
            svc.publish(m.reply.unwrap(), answer.to_string().into())
                .await
                .unwrap();
        }
    });
    let cookie = "auth_token=session-abc";
    let mut c = WsClient::connect_with(&edge.ws_url(), &[("cookie", cookie)])
        .await
        .unwrap();
    assert_eq!(c.expect("welcome").await.unwrap()["user"], "u-1");
    assert_eq!(c.expect("joined").await.unwrap()["room"], "user:u-1");
    assert_eq!(c.expect("joined").await.unwrap()["room"], "team:7");
    assert_eq!(close_code(&edge.ws_url(), "session-zzz").await, Some(4001));
}
