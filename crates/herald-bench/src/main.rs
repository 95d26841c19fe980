//! `herald-bench`: measures Herald against Socket.IO, NATS's own WebSocket
//! listener and a minimal broadcaster (the ceiling), on the same machine, in the
//! same run, with the same client.
//!
//! ```text
//! main.rs            command line
//! coordinator.rs     starts a target, spawns workers, publishes, collects
//! worker.rs          `herald-bench worker`: holds connections, records deliveries
//! protocol.rs        coordinator ↔ worker JSON lines
//! targets/           herald, ceiling, nats-ws, socketio(-redis): server start,
//!                    publisher, client handshake and frame decoding
//! scenarios/         broadcast, targeted, idle: rooms and event routing
//! payload.rs         the event payload and its scanner
//! ceiling_server.rs  `herald-bench ceiling-server`
//! procstat.rs        CPU and RSS of server processes from /proc
//! children.rs        child processes, free ports
//! report.rs          JSON and Markdown results
//! ```
//!
//! BENCHMARKS.md at the repository root documents the method and every flag.

mod ceiling_server;
mod children;
mod coordinator;
mod payload;
mod procstat;
mod protocol;
mod report;
mod scenarios;
mod targets;
mod worker;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use targets::TargetKind;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator: Herald vs Socket.IO, NATS WebSocket and a minimal broadcaster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario against one target.
    Run {
        /// The target.
        #[arg(long, value_enum, default_value = "herald")]
        target: TargetKind,
        #[command(flatten)]
        args: coordinator::BenchArgs,
    },
    /// Run a scenario against several targets in turn and print ratios against Herald.
    Compare {
        /// Targets, comma-separated, in the order run.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "herald,ceiling,nats-ws,socketio,socketio-redis"
        )]
        targets: Vec<TargetKind>,
        /// Exit with an error if Herald lost or duplicated an event, or a target delivered nothing (the CI smoke run).
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        args: coordinator::BenchArgs,
    },
    /// Internal: a worker process, driven over stdin/stdout by `run`/`compare`.
    #[command(hide = true)]
    Worker,
    /// The ceiling target: a minimal WebSocket broadcaster (no NATS, no JSON).
    CeilingServer {
        /// Port to listen on, on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        // One thread per worker process: several workers use several cores.
        Cmd::Worker => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(worker::run()),
        Cmd::CeilingServer { port } => {
            tokio::runtime::Runtime::new()?.block_on(ceiling_server::serve(port))
        }
        Cmd::Run { target, args } => coordinate(&[target], &args, false),
        Cmd::Compare {
            targets,
            check,
            args,
        } => coordinate(&targets, &args, check),
    }
}

fn coordinate(targets: &[TargetKind], args: &coordinator::BenchArgs, check: bool) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let report = rt.block_on(async {
        tokio::select! {
            r = coordinator::run(targets, args) => r,
            // Dropping the run's future kills every process it started.
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })?;
    if check {
        check_report(&report)?;
    }
    Ok(())
}

/// The smoke run's pass rule.
fn check_report(report: &report::RunReport) -> Result<()> {
    let mut problems = Vec::new();
    for t in &report.targets {
        if let Some(e) = &t.error {
            problems.push(format!("{}: {e}", t.target));
            continue;
        }
        let delivered: u64 = t.steps.iter().map(|s| s.deliveries).sum();
        let streams = matches!(report.scenario.as_str(), "broadcast" | "targeted");
        if streams && delivered == 0 {
            problems.push(format!("{} delivered nothing", t.target));
        }
        if let Some(s) = &t.storm
            && !s.complete
        {
            problems.push(format!(
                "{}: reconnect storm incomplete ({} lost, {} failed)",
                t.target, s.lost, s.failed
            ));
        }
        if t.target == "herald" {
            for s in &t.steps {
                if s.lost > 0 || s.duplicates > 0 {
                    problems.push(format!(
                        "herald lost {} and duplicated {} at {} ev/s",
                        s.lost, s.duplicates, s.rate
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("check failed: {}", problems.join("; "));
    }
    Ok(())
}
