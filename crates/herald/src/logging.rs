//! Structured logs through `tracing`: human-readable text or one JSON object per
//! line (`log.format = "json"`), filtered by `RUST_LOG` or `log.level`.

use herald_edge::config::LogConfig;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
