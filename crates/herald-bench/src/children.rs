//! Child processes the coordinator starts (servers, workers), free ports, and
//! waiting for a server to listen.
//!
//! Every server is wrapped in a [`ChildGuard`] that kills it when dropped, so an
//! error, a failed step or Ctrl-C (the coordinator turns it into an error and
//! unwinds) never leaves a `nats-server`, `herald` or `node` behind. Workers are
//! tokio children with `kill_on_drop`, and also exit on their own when their
//! stdin closes.

use anyhow::{Context as _, Result, bail};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child process, killed (and reaped) on drop.
pub struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd` under `name` (used in logs and reports). Its stdout and
    /// stderr go to `log` (a file) when given, else to nowhere.
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&std::path::Path>) -> Result<Self> {
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("creating log file {}", path.display()))?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        tracing::info!(name, pid = child.id(), "started");
        Ok(Self {
            name: name.into(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name it was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::debug!(name = %self.name, "stopped");
    }
}

/// A TCP port free right now on 127.0.0.1 (bound to port 0, read, released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding port 0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`, checking
/// that `child` is still alive meanwhile.
pub async fn wait_for_port(child: &mut ChildGuard, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        child.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on port {port} within {timeout:?}",
                child.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on `127.0.0.1:port` with a bare HTTP/1.0 request; true on a 200.
pub async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).await.unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
}

/// The `nats-server` to run: `HERALD_NATS_SERVER_BIN`, else the one on `PATH`
/// (`scripts/ensure-nats.sh` installs it).
pub fn nats_server_bin() -> String {
    std::env::var("HERALD_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}
