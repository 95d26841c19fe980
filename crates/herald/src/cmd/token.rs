//! `herald token`: mint an HS256 token with the configured secret.

use anyhow::{Context as _, Result};
use herald_protocol::Claims;
use std::path::Path;

/// Arguments of `herald token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long, default_value = "alice")]
    pub sub: String,
    /// Room patterns the user may join (repeatable), e.g. channel:*.
    #[arg(long = "room")]
    pub rooms: Vec<String>,
    /// Rooms joined automatically at connect (repeatable).
    #[arg(long = "join")]
    pub join: Vec<String>,
    /// Room patterns the user may publish volatile events to (repeatable).
    #[arg(long = "publish")]
    pub publish: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl: u64,
}

/// Signs a token for `a` with `secret`.
pub fn mint(secret: &str, a: &TokenArgs) -> Result<String> {
    let claims = Claims {
        sub: a.sub.clone(),
        exp: Some(jsonwebtoken::get_current_timestamp() + a.ttl),
        rooms: a.rooms.clone(),
        join: a.join.clone(),
        publish: a.publish.clone(),
        ..Default::default()
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Prints a token.
pub fn run(file: Option<&Path>, a: TokenArgs) -> Result<()> {
    let cfg = super::load_config(file)?;
    let secret = cfg
        .auth
        .hs256_secret
        .context("no secret: set HERALD_AUTH__HS256_SECRET (the same one the edge uses)")?;
    println!("{}", mint(&secret, &a)?);
    Ok(())
}
