//! Authenticating a new connection: the Origin check, finding the token (request
//! or first frame), and verifying it locally or through the connect hook.

use super::handle::Disconnect;
use crate::auth::{AuthError, Session, TokenSource};
use crate::edge::Edge;
use axum::extract::ws::{Message, WebSocket};
use axum::http::HeaderMap;
use futures::StreamExt as _;
use futures::stream::SplitStream;
use herald_protocol::frame::{ClientFrame, decode_client_frame};
use herald_protocol::{Claims, CloseCode, UserId};

/// Whether a request's `Origin` is allowed. Requests without one (non-browser
/// clients) are; an empty allow-list allows same-origin requests only.
pub fn origin_allowed(req: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = req.get("origin") else {
        return true;
    };
    // An Origin that is not visible ASCII is no origin we could allow: refuse
    // it rather than treat it as absent.
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    if allowed.is_empty() {
        let host = req.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
        return !host.is_empty() && origin_host.eq_ignore_ascii_case(host);
    }
    false
}

fn refuse(
    edge: &Edge,
    code: CloseCode,
    reason: &'static str,
    detail: impl Into<String>,
) -> Disconnect {
    edge.metrics.auth_failure(reason);
    Disconnect::new(code, detail)
}

/// Finds and checks the connection's credentials.
pub async fn authenticate(
    edge: &Edge,
    stream: &mut SplitStream<WebSocket>,
    found: Option<(String, TokenSource)>,
) -> Result<Session, Disconnect> {
    let (token, source) = match found {
        Some(t) => t,
        None => first_frame_token(edge, stream).await?,
    };
    if edge.cfg.auth.connect_hook {
        return connect_hook(edge, &token, source).await;
    }
    edge.verifier.verify(&token).await.map_err(|e| match e {
        AuthError::Expired => refuse(
            edge,
            CloseCode::TOKEN_EXPIRED,
            "expired",
            "token expired: get a new one and reconnect",
        ),
        AuthError::Invalid(why) => refuse(
            edge,
            CloseCode::UNAUTHORIZED,
            "invalid",
            format!("unauthorized: {why}"),
        ),
    })
}

async fn first_frame_token(
    edge: &Edge,
    stream: &mut SplitStream<WebSocket>,
) -> Result<(String, TokenSource), Disconnect> {
    let wait = edge.cfg.auth_timeout();
    // One deadline for the whole wait: pings must not buy an unauthenticated
    // socket more time (a ping every few seconds would hold it open forever).
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.next()).await.map_err(|_| {
            refuse(
                edge,
                CloseCode::UNAUTHORIZED,
                "timeout",
                format!(
                    "no token: send it as a Bearer header, the `{}` cookie, ?token=, or a first frame {{\"type\":\"auth\",\"token\":\"…\"}} within {} ms",
                    edge.cfg.auth.cookie_name,
                    wait.as_millis()
                ),
            )
        })?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                return match decode_client_frame(&t) {
                    Ok(ClientFrame::Auth { token }) => Ok((token, TokenSource::Frame)),
                    _ => Err(refuse(
                        edge,
                        CloseCode::UNAUTHORIZED,
                        "no_token",
                        "unauthorized: the first frame must be {\"type\":\"auth\",\"token\":\"…\"} when the request carries no token",
                    )),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => {
                return Err(refuse(
                    edge,
                    CloseCode::UNAUTHORIZED,
                    "no_token",
                    "unauthorized: expected an auth frame",
                ));
            }
        }
    }
}

/// What an auth service answers on `P.authn.connect`.
#[derive(Debug, serde::Deserialize)]
struct HookReply {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<u64>,
}

async fn connect_hook(
    edge: &Edge,
    token: &str,
    source: TokenSource,
) -> Result<Session, Disconnect> {
    let body = serde_json::json!({
        "credentials": token,
        "source": source.as_str(),
        "edge": edge.id,
    });
    let mut h = async_nats::HeaderMap::new();
    h.insert("Herald-Edge", edge.id.as_str());
    let req =
        edge.client
            .request_with_headers(edge.subjects.authn_connect(), h, body.to_string().into());
    let unavailable = |why: String| {
        edge.metrics.auth_failure("hook_unavailable");
        Disconnect::new(
            CloseCode::TRY_AGAIN_LATER,
            format!("the connect hook did not answer ({why}): try again later"),
        )
    };
    let msg = match tokio::time::timeout(edge.cfg.connect_hook_timeout(), req).await {
        Err(_) => return Err(unavailable("timeout".into())),
        Ok(Err(e)) => return Err(unavailable(e.kind().to_string())),
        Ok(Ok(m)) => m,
    };
    let reply: HookReply = serde_json::from_slice(&msg.payload).map_err(|e| {
        refuse(
            edge,
            CloseCode::UNAUTHORIZED,
            "hook_refused",
            format!("unauthorized: connect hook reply is not valid: {e}"),
        )
    })?;
    if let Some(err) = reply.error {
        return Err(refuse(
            edge,
            CloseCode::UNAUTHORIZED,
            "hook_refused",
            format!("unauthorized: {err}"),
        ));
    }
    let sub = reply.user.unwrap_or_default();
    let user = UserId::new(sub.clone()).map_err(|e| {
        refuse(
            edge,
            CloseCode::UNAUTHORIZED,
            "hook_refused",
            format!("unauthorized: connect hook named no valid user: {e}"),
        )
    })?;
    if let Some(exp) = reply.exp
        && exp <= jsonwebtoken::get_current_timestamp()
    {
        return Err(refuse(
            edge,
            CloseCode::TOKEN_EXPIRED,
            "expired",
            "session expired",
        ));
    }
    Ok(Session {
        user,
        claims: Claims {
            sub,
            exp: reply.exp,
            rooms: reply.rooms,
            join: reply.join,
            publish: reply.publish,
            info: reply.info,
            ..Default::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn origins() {
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&h(&[]), &list));
        assert!(origin_allowed(
            &h(&[("origin", "https://app.example")]),
            &list
        ));
        assert!(!origin_allowed(
            &h(&[("origin", "https://evil.example")]),
            &list
        ));
        assert!(origin_allowed(
            &h(&[
                ("origin", "http://localhost:8080"),
                ("host", "localhost:8080")
            ]),
            &[]
        ));
        assert!(!origin_allowed(
            &h(&[("origin", "http://evil:8080"), ("host", "localhost:8080")]),
            &[]
        ));
        assert!(origin_allowed(
            &h(&[("origin", "https://x")]),
            &["*".to_string()]
        ));
        let mut bad = HeaderMap::new();
        bad.insert(
            "origin",
            axum::http::HeaderValue::from_bytes(b"https://app.example\xff").unwrap(),
        );
        assert!(!origin_allowed(&bad, &list));
        assert!(!origin_allowed(&h(&[("origin", "null")]), &list));
    }
}
