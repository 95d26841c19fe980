//! `herald` processes for tests.

use crate::nats::NatsServer;
use anyhow::{Context as _, Result, bail};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The herald binary: `HERALD_BIN`, or built with cargo once per test process.
pub fn herald_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("HERALD_BIN") {
            return PathBuf::from(p);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "herald"]).current_dir(&root);
        // Cargo sets these for the test process; some build scripts (ring)
        // track them, so passing them on would rebuild on every run.
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && (k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_CRATE_")
                    || k == "CARGO_MANIFEST_DIR"
                    || k == "CARGO_MANIFEST_PATH"
                    || k == "CARGO_PRIMARY_PACKAGE")
            {
                cmd.env_remove(k);
            }
        }
        let status = cmd.status().expect("running cargo build -p herald");
        assert!(status.success(), "cargo build -p herald failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("debug/herald")
    })
    .clone()
}

/// Configures a `herald serve` process.
#[derive(Debug, Clone)]
pub struct HeraldBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl HeraldBuilder {
    /// An edge for `nats` with test defaults (the test secret, JSON logs, setup on start).
    pub fn new(nats: &NatsServer) -> Self {
        Self::with_url(&nats.url())
    }

    /// An edge for the NATS at `url`.
    pub fn with_url(url: &str) -> Self {
        let env = [
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_NATS__URL", url),
            ("HERALD_AUTH__HS256_SECRET", crate::SECRET),
            ("HERALD_SETUP_ON_START", "true"),
            ("HERALD_LOG__FORMAT", "json"),
            ("HERALD_LOG__LEVEL", "info,herald_edge=debug"),
        ];
        Self {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: vec!["serve".into()],
        }
    }

    /// Sets (or overrides) an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    /// Removes an environment variable.
    pub fn unset(mut self, k: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self
    }

    /// Replaces the arguments (default `serve`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Starts the process and waits until it listens.
    pub fn start(self) -> Result<Herald> {
        let mut cmd = Command::new(herald_bin());
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting herald")?;
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stderr.take().expect("stderr")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().expect("stdout")),
        ] {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("herald edge listening")
                        && let Some(addr) = serde_json::from_str::<serde_json::Value>(&line)
                            .ok()
                            .and_then(|v| {
                                v["addr"]
                                    .as_str()
                                    .and_then(|a| a.parse::<SocketAddr>().ok())
                            })
                    {
                        let _ = tx.send(addr);
                    }
                    if std::env::var_os("HERALD_TEST_LOGS").is_some() {
                        eprintln!("[herald] {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(45);
        let addr = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(50)) {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "herald exited with {status} before listening:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "herald did not start listening:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Ok(Herald {
            child: Some(child),
            addr,
            logs,
        })
    }
}

/// A running `herald serve`, killed on drop.
pub struct Herald {
    child: Option<Child>,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Herald {
    /// Starts an edge for `nats` with the test defaults.
    pub fn start(nats: &NatsServer) -> Result<Self> {
        HeraldBuilder::new(nats).start()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id (for `/proc` inspection: open files, memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Everything the process has logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    /// Kills with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain HTTP GET: `(status, body)`.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.addr, path).await
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.0 GET over a real socket.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
