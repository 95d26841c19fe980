//! `herald`: the one binary. Subcommands live in [`cmd`], one module each.

mod cmd;
mod logging;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Real-time event fan-out from NATS JetStream to browsers over WebSocket.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
struct Cli {
    /// TOML configuration file (environment variables HERALD_… override it).
    #[arg(long, short = 'c', global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an edge worker: WebSocket clients on one side, NATS on the other.
    Serve,
    /// Start a local NATS with JetStream, set it up, and run an edge with the demo page.
    Dev(cmd::dev::DevArgs),
    /// Create or update the stream and the presence bucket (idempotent).
    Setup,
    /// Publish an event to a room (durable unless --volatile).
    Publish(cmd::publish::PublishArgs),
    /// Who is online: in a room (`herald presence channel:42`) or a user (`--user 6`).
    Presence(cmd::presence::PresenceArgs),
    /// Mint a token signed with the configured HS256 secret (for development and tests).
    Token(cmd::token::TokenArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Serve => cmd::serve::run(cli.config.as_deref()).await,
        Command::Dev(a) => cmd::dev::run(cli.config.as_deref(), a).await,
        Command::Setup => cmd::setup::run(cli.config.as_deref()).await,
        Command::Publish(a) => cmd::publish::run(cli.config.as_deref(), a).await,
        Command::Presence(a) => cmd::presence::run(cli.config.as_deref(), a).await,
        Command::Token(a) => cmd::token::run(cli.config.as_deref(), a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
