//! Structured logs through `tracing`: human-readable text or one JSON object per
//! line (`log.format = "json"`), filtered by `RUST_LOG` or `log.level`.
//!
//! Whatever the filter says, targets that log message payloads are capped at
//! `debug`: tungstenite traces every WebSocket frame it reads, and the `auth`
//! and `refresh` frames carry tokens (see [`PAYLOAD_TARGETS`]).

use herald_edge::config::LogConfig;
use tracing_subscriber::EnvFilter;

/// Targets whose `trace` output contains WebSocket payloads, from the least to
/// the most specific (a more specific directive in the user's filter would win
/// over a cap on the crate alone).
pub const PAYLOAD_TARGETS: &[&str] = &[
    "tungstenite",
    "tungstenite::protocol",
    "tungstenite::protocol::frame",
    "tungstenite::handshake",
    "tokio_tungstenite",
];

/// The filter: the configured one, with [`PAYLOAD_TARGETS`] capped at `debug`.
pub fn filter(configured: Option<&str>, default_level: &str) -> EnvFilter {
    let mut filter = configured
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    for target in PAYLOAD_TARGETS {
        if let Ok(d) = format!("{target}=debug").parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Installs the global subscriber (once).
pub fn init(cfg: &LogConfig) {
    let from_env = std::env::var("RUST_LOG").ok();
    let filter = filter(from_env.as_deref(), &cfg.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_targets_are_capped_whatever_the_filter() {
        for f in [
            "trace",
            "tungstenite=trace",
            "info,tungstenite::protocol=trace,tungstenite::protocol::frame=trace",
        ] {
            let shown = filter(Some(f), "info").to_string();
            for t in PAYLOAD_TARGETS {
                assert!(shown.contains(&format!("{t}=debug")), "{f}: {shown}");
                assert!(!shown.contains(&format!("{t}=trace")), "{f}: {shown}");
            }
        }
    }
}
