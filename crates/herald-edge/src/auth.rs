//! Token verification: where a connection's token comes from, and whether it is
//! genuine.
//!
//! The key is chosen by the token's algorithm family, never by anything else in
//! the token: an HS token is checked only against the shared secret and an RS or
//! ES token only against a public key, so algorithm confusion (an HS token signed
//! with the RSA public key as secret) and `alg: none` cannot pass. JWKS keys are
//! selected by `kid` and must match the token's algorithm as well.

use crate::config::AuthConfig;
use axum::http::{HeaderMap, Uri, header};
use herald_protocol::{Claims, UserId};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer …`.
    Header,
    /// The configured cookie.
    Cookie,
    /// `?token=…`.
    Query,
    /// A first `{"type":"auth"}` frame.
    Frame,
}

impl TokenSource {
    /// Name used in logs and the connect hook.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Cookie => "cookie",
            Self::Query => "query",
            Self::Frame => "frame",
        }
    }
}

/// Finds a token in the upgrade request: header, then cookie, then query.
pub fn token_from_request(
    headers: &HeaderMap,
    uri: &Uri,
    cookie_name: &str,
) -> Option<(String, TokenSource)> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some((v[7..].trim().to_owned(), TokenSource::Header));
        }
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for pair in cookies.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == cookie_name
                && !v.is_empty()
            {
                return Some((v.trim_matches('"').to_owned(), TokenSource::Cookie));
            }
        }
    }
    let query = uri.query()?;
    for pair in query.split('&') {
        if let Some(("token", v)) = pair.split_once('=')
            && !v.is_empty()
        {
            return Some((percent_decode(v), TokenSource::Query));
        }
    }
    None
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, forged, for another issuer or audience, or lacks
    /// `sub`. Close 4001.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed. Close 4002.
    #[error("token expired")]
    Expired,
}

impl AuthError {
    /// A short label for the `auth_failures_total{reason}` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Expired => "expired",
        }
    }
}

/// An authenticated session: who, what the token allows, and until when.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user.
    pub user: UserId,
    /// All claims.
    pub claims: Claims,
}

impl Session {
    /// Expiry as seconds since the epoch.
    pub fn exp(&self) -> Option<u64> {
        self.claims.exp
    }
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, (Algorithm, DecodingKey)>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    hs: Option<DecodingKey>,
    rs: Option<DecodingKey>,
    es: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs", &self.hs.is_some())
            .field("rs", &self.rs.is_some())
            .field("es", &self.es.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| &j.url))
            .finish()
    }
}

/// Why the verifier could not be built from config.
#[derive(Debug, thiserror::Error)]
#[error("auth.{key}: {message}")]
pub struct KeyError {
    key: &'static str,
    message: String,
}

fn pem_or_file(v: &str) -> Result<Vec<u8>, String> {
    if v.contains("-----BEGIN") {
        Ok(v.as_bytes().to_vec())
    } else {
        std::fs::read(v).map_err(|e| format!("not a PEM key and not a readable file `{v}`: {e}"))
    }
}

fn jwk_alg_family(params: &AlgorithmParameters) -> Option<Algorithm> {
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(_) => Some(Algorithm::ES256),
        _ => None,
    }
}

impl Verifier {
    /// Builds a verifier; reads key files and checks that PEM keys parse.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, KeyError> {
        let rs = cfg
            .rs256_public_key
            .as_deref()
            .map(|k| {
                let pem = pem_or_file(k).map_err(|message| KeyError {
                    key: "rs256_public_key",
                    message,
                })?;
                DecodingKey::from_rsa_pem(&pem).map_err(|e| KeyError {
                    key: "rs256_public_key",
                    message: format!("not an RSA public key in PEM form: {e}"),
                })
            })
            .transpose()?;
        let es = cfg
            .es256_public_key
            .as_deref()
            .map(|k| {
                let pem = pem_or_file(k).map_err(|message| KeyError {
                    key: "es256_public_key",
                    message,
                })?;
                DecodingKey::from_ec_pem(&pem).map_err(|e| KeyError {
                    key: "es256_public_key",
                    message: format!("not an EC (P-256) public key in PEM form: {e}"),
                })
            })
            .transpose()?;
        let jwks = cfg.jwks_url.as_ref().map(|url| Jwks {
            url: url.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refresh: Duration::from_secs(cfg.jwks_min_refresh_secs),
        });
        Ok(Self {
            hs: cfg
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            rs,
            es,
            jwks,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_secs,
        })
    }

    /// Whether any key is configured (the connect hook may be the only source).
    pub fn has_keys(&self) -> bool {
        self.hs.is_some() || self.rs.is_some() || self.es.is_some() || self.jwks.is_some()
    }

    /// Whether keys come from a JWKS URL (which then needs periodic refresh).
    pub fn uses_jwks(&self) -> bool {
        self.jwks.is_some()
    }

    /// Fetches the JWKS document now (unless fetched within the minimum interval
    /// and `force` is false). Returns the number of usable keys.
    pub async fn refresh_jwks(&self, force: bool) -> Result<usize, String> {
        let Some(j) = &self.jwks else { return Ok(0) };
        let mut last = j.last_fetch.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < j.min_refresh) {
            return Ok(j.keys.read().map(|k| k.len()).unwrap_or(0));
        }
        *last = Some(Instant::now());
        let set: JwkSet = j
            .client
            .get(&j.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching JWKS from {}: {e}", j.url))?
            .json()
            .await
            .map_err(|e| format!("JWKS at {} is not a JWK set: {e}", j.url))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) =
                (jwk.common.key_id.clone(), jwk_alg_family(&jwk.algorithm))
            else {
                continue;
            };
            if let Ok(k) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (alg, k));
            }
        }
        let n = keys.len();
        if let Ok(mut w) = j.keys.write() {
            *w = keys;
        }
        Ok(n)
    }

    fn jwks_key(&self, kid: &str, alg: Algorithm) -> Option<DecodingKey> {
        let j = self.jwks.as_ref()?;
        let keys = j.keys.read().ok()?;
        let (family, key) = keys.get(kid)?;
        (*family == alg).then(|| key.clone())
    }

    /// Verifies a token and returns the session it grants.
    pub async fn verify(&self, token: &str) -> Result<Session, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid(format!(
                "token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token header: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hs.clone(),
            Algorithm::RS256 | Algorithm::ES256 => {
                let static_key = if header.alg == Algorithm::RS256 {
                    &self.rs
                } else {
                    &self.es
                };
                match (&header.kid, static_key) {
                    (Some(kid), _) if self.jwks.is_some() => match self.jwks_key(kid, header.alg) {
                        Some(k) => Some(k),
                        None => {
                            // An unknown kid may be a freshly rotated key: fetch once.
                            let _ = self.refresh_jwks(false).await;
                            self.jwks_key(kid, header.alg)
                                .or_else(|| static_key.clone())
                        }
                    },
                    (_, k) => k.clone(),
                }
            }
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )));
            }
        };
        let key = key.ok_or_else(|| {
            AuthError::Invalid(format!("no key is configured for {:?} tokens", header.alg))
        })?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        match &self.audience {
            Some(a) => {
                v.set_audience(&[a]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
            v.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
            ErrorKind::ImmatureSignature => {
                AuthError::Invalid("token is not valid yet (nbf)".into())
            }
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
            ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
            ErrorKind::MissingRequiredClaim(c) => {
                AuthError::Invalid(format!("missing claim `{c}`"))
            }
            ErrorKind::Json(_) => {
                AuthError::Invalid("claims are not the expected JSON (is `sub` a string?)".into())
            }
            _ => AuthError::Invalid(format!("token rejected: {e}")),
        })?;
        let user = UserId::new(data.claims.sub.clone())
            .map_err(|e| AuthError::Invalid(format!("`sub`: {e}")))?;
        Ok(Session {
            user,
            claims: data.claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "test-secret-0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::from_config(&AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn valid_hs256_token() {
        let s = verifier()
            .verify(&token(
                serde_json::json!({"sub":"6","exp": now()+60, "rooms":["channel:*"]}),
            ))
            .await
            .unwrap();
        assert_eq!(s.user.as_str(), "6");
        assert_eq!(s.claims.rooms, ["channel:*"]);
    }

    #[tokio::test]
    async fn refused_tokens() {
        let v = verifier();
        assert!(matches!(
            v.verify(&token(serde_json::json!({"sub":"6","exp": now()-100})))
                .await,
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            v.verify(&token(serde_json::json!({"exp": now()+60}))).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify(&token(serde_json::json!({"sub":"", "exp": now()+60})))
                .await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify(&token(serde_json::json!({"sub":"6","nbf": now()+600})))
                .await,
            Err(AuthError::Invalid(_))
        ));
        // alg none
        let none = format!(
            "{}.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"alg":"none","typ":"JWT"}"#
            ),
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"sub":"6"}"#
            )
        );
        assert!(matches!(v.verify(&none).await, Err(AuthError::Invalid(_))));
        // tampered payload
        let t = token(serde_json::json!({"sub":"6"}));
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"sub":"7"}"#
            ),
            parts[2]
        );
        assert!(matches!(
            v.verify(&forged).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).await,
            Err(AuthError::Invalid(_))
        ));
        // RS256 token with no RSA key configured
        let rs_header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            r#"{"alg":"RS256","typ":"JWT"}"#,
        );
        assert!(matches!(
            v.verify(&format!("{rs_header}.{}.{}", parts[1], parts[2]))
                .await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let v = Verifier::from_config(&AuthConfig {
            hs256_secret: Some(SECRET.into()),
            issuer: Some("https://issuer".into()),
            audience: Some("herald".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(
            v.verify(&token(
                serde_json::json!({"sub":"6","iss":"https://issuer","aud":"herald"})
            ))
            .await
            .is_ok()
        );
        assert!(
            v.verify(&token(
                serde_json::json!({"sub":"6","iss":"https://other","aud":"herald"})
            ))
            .await
            .is_err()
        );
        assert!(
            v.verify(&token(
                serde_json::json!({"sub":"6","iss":"https://issuer","aud":"other"})
            ))
            .await
            .is_err()
        );
        assert!(
            v.verify(&token(serde_json::json!({"sub":"6","aud":"herald"})))
                .await
                .is_err()
        );
        // A configured audience is required, not merely checked when present.
        assert!(
            v.verify(&token(
                serde_json::json!({"sub":"6","iss":"https://issuer"})
            ))
            .await
            .is_err()
        );
    }

    #[test]
    fn token_sources_in_order() {
        let uri: Uri = "/ws?x=1&token=q%2Ebc".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            token_from_request(&h, &uri, "auth_token"),
            Some(("q.bc".into(), TokenSource::Query))
        );
        h.insert(header::COOKIE, "a=b; auth_token=c".parse().unwrap());
        assert_eq!(
            token_from_request(&h, &uri, "auth_token"),
            Some(("c".into(), TokenSource::Cookie))
        );
        h.insert(header::AUTHORIZATION, "Bearer hdr".parse().unwrap());
        assert_eq!(
            token_from_request(&h, &uri, "auth_token"),
            Some(("hdr".into(), TokenSource::Header))
        );
        let uri: Uri = "/ws".parse().unwrap();
        assert_eq!(
            token_from_request(&HeaderMap::new(), &uri, "auth_token"),
            None
        );
    }
}
