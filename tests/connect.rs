//! Connecting: the four token sources, the Origin allow-list, and every way a
//! handshake is refused (each with the contract's close code).
#![allow(clippy::unwrap_used)]

use herald_test_support::{
    Herald, HeraldBuilder, NatsServer, SECRET, WsClient, now, token, token_with, user_token,
};
use serde_json::json;
use std::time::Duration;

async fn welcomed(c: &mut WsClient, user: &str) {
    let w = c.expect("welcome").await.unwrap();
    assert_eq!(w["user"], user);
    assert!(w["conn"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(w["edge"].as_str().is_some());
    assert_eq!(w["ping_ms"], 25000);
}

#[tokio::test]
async fn token_in_authorization_header_is_accepted() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let auth = format!("Bearer {}", user_token("h", &[]));
    let mut c = WsClient::connect_with(&edge.ws_url(), &[("authorization", &auth)])
        .await
        .unwrap();
    welcomed(&mut c, "h").await;
}

#[tokio::test]
async fn token_in_cookie_is_accepted() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let cookie = format!("theme=dark; auth_token={}", user_token("c", &[]));
    let mut c = WsClient::connect_with(&edge.ws_url(), &[("cookie", &cookie)])
        .await
        .unwrap();
    welcomed(&mut c, "c").await;
}

#[tokio::test]
async fn token_in_query_is_accepted() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut c = WsClient::connect(&edge.ws_url(), &user_token("q", &[]))
        .await
        .unwrap();
    welcomed(&mut c, "q").await;
}

#[tokio::test]
async fn token_in_first_frame_is_accepted() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut c = WsClient::connect_with(&edge.ws_url(), &[]).await.unwrap();
    c.send(json!({"type":"auth","token": user_token("f", &[])}))
        .await
        .unwrap();
    welcomed(&mut c, "f").await;
}

#[tokio::test]
async fn header_wins_over_cookie_and_query() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let auth = format!("Bearer {}", user_token("header", &[]));
    let cookie = format!("auth_token={}", user_token("cookie", &[]));
    let url = format!("{}?token={}", edge.ws_url(), user_token("query", &[]));
    let mut c = WsClient::connect_with(&url, &[("authorization", &auth), ("cookie", &cookie)])
        .await
        .unwrap();
    welcomed(&mut c, "header").await;
}

#[tokio::test]
async fn missing_auth_frame_closes_4001_after_the_auth_timeout() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_AUTH__AUTH_TIMEOUT_MS", "300")
        .start()
        .unwrap();
    let mut c = WsClient::connect_with(&edge.ws_url(), &[]).await.unwrap();
    let (d, code) = c.expect_close().await.unwrap();
    assert_eq!(code, 4001);
    let d = d.unwrap();
    assert_eq!(
        (d["code"].as_u64(), d["reconnect"].as_bool()),
        (Some(4001), Some(false))
    );
}

#[tokio::test]
async fn a_first_frame_other_than_auth_closes_4001() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let mut c = WsClient::connect_with(&edge.ws_url(), &[]).await.unwrap();
    c.send(json!({"type":"join","id":1,"room":"channel:1"}))
        .await
        .unwrap();
    assert_eq!(c.expect_close().await.unwrap().1, 4001);
}

#[tokio::test]
async fn refused_tokens_close_with_4001_or_4002() {
    let nats = NatsServer::start().unwrap();
    let edge = Herald::start(&nats).unwrap();
    let cases = [
        (
            token_with("another-secret-0123456789abcdef", json!({"sub":"6"})),
            4001,
            "wrong key",
        ),
        (token(json!({"exp": now() + 60})), 4001, "missing sub"),
        (
            token(json!({"sub": "6", "nbf": now() + 3600})),
            4001,
            "not yet valid",
        ),
        ("not.a.token".to_string(), 4001, "garbage"),
        (
            token(json!({"sub":"6","exp": now() - 120})),
            4002,
            "expired",
        ),
    ];
    let tokens: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    for (t, want, what) in cases {
        let mut c = WsClient::connect(&edge.ws_url(), &t).await.unwrap();
        let (d, code) = c.expect_close().await.unwrap();
        assert_eq!(code, want, "{what}");
        assert_eq!(d.unwrap()["code"], want, "{what}");
    }
    // The secret and tokens never reach the logs.
    let logs = edge.logs().join("\n");
    assert!(!logs.contains(SECRET));
    for t in tokens.iter().filter(|t| t.len() > 20) {
        assert!(!logs.contains(t.as_str()), "a token was logged");
    }
}

#[tokio::test]
async fn a_token_that_expires_during_the_session_closes_4002() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_AUTH__LEEWAY_SECS", "0")
        .start()
        .unwrap();
    let t = token(json!({"sub":"6","exp": now() + 2}));
    let (mut c, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    let (d, code) = c.expect_close().await.unwrap();
    assert_eq!(code, 4002);
    assert_eq!(d.unwrap()["reconnect"], true);
}

#[tokio::test]
async fn foreign_origin_closes_1008_and_allowed_origin_connects() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env(
            "HERALD_ALLOWED_ORIGINS",
            "https://app.example,https://admin.example",
        )
        .start()
        .unwrap();
    let t = user_token("6", &[]);
    let url = format!("{}?token={t}", edge.ws_url());
    let mut ok = WsClient::connect_with(&url, &[("origin", "https://admin.example")])
        .await
        .unwrap();
    ok.expect("welcome").await.unwrap();
    let mut bad = WsClient::connect_with(&url, &[("origin", "https://evil.example")])
        .await
        .unwrap();
    assert_eq!(bad.expect_close().await.unwrap().1, 1008);
}

#[tokio::test]
async fn cookie_auth_from_a_foreign_origin_is_refused() {
    // Cross-site WebSocket hijacking: the browser sends the cookie, the Origin gives it away.
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .start()
        .unwrap();
    let cookie = format!("auth_token={}", user_token("victim", &[]));
    let mut c = WsClient::connect_with(
        &edge.ws_url(),
        &[("cookie", &cookie), ("origin", "https://evil.example")],
    )
    .await
    .unwrap();
    let (_, code) = c.expect_close().await.unwrap();
    assert_eq!(code, 1008);
}

#[tokio::test]
async fn connections_beyond_the_per_user_limit_close_4029() {
    let nats = NatsServer::start().unwrap();
    let edge = HeraldBuilder::new(&nats)
        .env("HERALD_LIMITS__MAX_CONNS_PER_USER", "2")
        .start()
        .unwrap();
    let t = user_token("6", &[]);
    let (_a, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    let (_b, _) = WsClient::connect_welcomed(&edge.ws_url(), &t)
        .await
        .unwrap();
    let mut c = WsClient::connect(&edge.ws_url(), &t).await.unwrap();
    assert_eq!(c.expect_close().await.unwrap().1, 4029);
    // Another user is not affected.
    let (_d, _) = WsClient::connect_welcomed(&edge.ws_url(), &user_token("7", &[]))
        .await
        .unwrap();
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
}
