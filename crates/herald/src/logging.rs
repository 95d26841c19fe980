//! Structured logs through `tracing`: human-readable text or one JSON object per
//! line (`log.format = "json"`), filtered by `RUST_LOG` or `log.level`.
//!
//! Whatever the filter says, targets that log message payloads are capped at
//! `debug`: tungstenite traces every WebSocket frame it reads, and the `auth`
//! and `refresh` frames carry tokens (see [`PAYLOAD_TARGETS`]). The cap only
//! lowers: at `info`, those targets log at `info` like everything else.

use herald_edge::config::LogConfig;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

/// Targets (and, as prefixes, their modules) whose `trace` output contains
/// WebSocket payloads.
pub const PAYLOAD_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// The configured filter (`RUST_LOG` wins over `log.level`).
pub fn filter(configured: Option<&str>, default_level: &str) -> EnvFilter {
    configured
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level))
}

/// The cap: [`PAYLOAD_TARGETS`] at most `debug`, everything else unchanged.
/// An event is logged only if both the configured filter and the cap allow it.
pub fn cap() -> Targets {
    PAYLOAD_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::DEBUG),
    )
}

/// The subscriber for `filter`, writing to `w`.
fn subscriber<W>(filter: EnvFilter, json: bool, w: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(w);
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    Registry::default().with(fmt.with_filter(filter.and(cap())))
}

/// Installs the global subscriber (once).
pub fn init(cfg: &LogConfig) {
    let from_env = std::env::var("RUST_LOG").ok();
    let filter = filter(from_env.as_deref(), &cfg.level);
    let _ = subscriber(filter, cfg.format == "json", std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a subscriber with filter `f` writes for one event per target and level.
    fn logged(f: &str) -> String {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out = buf.clone();
        let make = move || Writer(out.clone());
        let sub = subscriber(filter(Some(f), "info"), false, make);
        tracing::subscriber::with_default(sub, || {
            tracing::trace!(target: "tungstenite::protocol", "tung-trace");
            tracing::debug!(target: "tungstenite::protocol", "tung-debug");
            tracing::info!(target: "tungstenite::protocol", "tung-info");
            tracing::trace!(target: "tokio_tungstenite", "tokio-tung-trace");
            tracing::trace!(target: "herald_edge::router", "herald-trace");
            tracing::debug!(target: "herald_edge::router", "herald-debug");
        });
        String::from_utf8(buf.lock().unwrap().clone()).unwrap()
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn payload_targets_are_capped_at_debug_whatever_the_filter() {
        for f in [
            "trace",
            "tungstenite=trace,tokio_tungstenite=trace",
            "info,tungstenite::protocol=trace,tokio_tungstenite=trace",
        ] {
            let out = logged(f);
            assert!(!out.contains("tung-trace"), "{f}: {out}");
            assert!(out.contains("tung-debug"), "{f}: {out}");
        }
        assert!(logged("trace").contains("herald-trace"));
    }

    #[test]
    fn the_cap_never_raises_a_level() {
        let out = logged("info");
        assert!(out.contains("tung-info"), "{out}");
        assert!(!out.contains("tung-debug"), "{out}");
        assert!(!out.contains("herald-debug"), "{out}");
        let out = logged("warn,herald_edge=debug");
        assert!(!out.contains("tung"), "{out}");
        assert!(out.contains("herald-debug"), "{out}");
    }
}
