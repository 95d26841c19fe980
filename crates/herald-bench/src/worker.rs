//! `herald-bench worker`: one process holding up to 15,000 subscriber
//! connections (the machine allows 20,000 open files per process).
//!
//! It runs on a single-threaded tokio runtime: connections are local tasks that
//! share one [`State`] through `Rc<RefCell<…>>`, so recording a delivery takes no
//! lock and no atomic. Several workers run side by side to use several cores.
//! Per delivery a connection does only this: find `seq` and the publish time in
//! the frame, record `now - t` in the latency histogram, and set bit `seq` in its
//! own bitset (already set: a duplicate). At the end of a phase, every expected
//! bit that is not set is a lost event.
//!
//! The coordinator drives it over stdin/stdout, see `protocol.rs`.

use crate::protocol::{FromWorker, PhaseReport, ToWorker, WorkerConfig};
use crate::scenarios::Plan;
use crate::targets::{self, Frame};
use anyhow::{Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::Semaphore;

/// Largest latency recorded: one hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// A histogram as (value, count) pairs, for the wire.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

#[derive(Default)]
struct Conn {
    /// Bit `seq - phase_from` is set once that event arrived.
    bits: Vec<u64>,
    /// Distinct expected events received this phase.
    got: u64,
    open: bool,
}

struct State {
    plan: Plan,
    first_conn: usize,
    conns: Vec<Conn>,
    hist: Histogram<u64>,
    from: u64,
    report: PhaseReport,
}

impl State {
    fn record(&mut self, local: usize, seq: u64, t_ns: u64) {
        let now = crate::payload::now_ns();
        if seq < self.from {
            return; // a straggler of the previous phase, already counted lost there
        }
        let r = &mut self.report;
        r.deliveries += 1;
        if r.first_recv_ns == 0 {
            r.first_recv_ns = now;
        }
        r.last_recv_ns = now;
        self.hist
            .saturating_record((now.saturating_sub(t_ns) / 1000).max(1));
        let global = self.first_conn + local;
        if !self.plan.expects(global, seq) {
            r.unexpected += 1;
            return;
        }
        let c = &mut self.conns[local];
        let idx = usize::try_from(seq - self.from).unwrap_or(usize::MAX);
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        if c.bits.len() <= word {
            c.bits.resize(word + 1, 0);
        }
        if c.bits[word] & bit != 0 {
            r.duplicates += 1;
        } else {
            c.bits[word] |= bit;
            c.got += 1;
        }
    }

    fn begin(&mut self, from: u64) {
        self.from = from;
        self.hist.reset();
        self.report = PhaseReport::default();
        for c in &mut self.conns {
            c.bits.clear();
            c.got = 0;
        }
    }

    /// Expected deliveries of `[from, to)` still missing, over every connection.
    fn missing(&self, to: u64) -> (u64, u64) {
        let (mut expected, mut missing) = (0, 0);
        for (i, c) in self.conns.iter().enumerate() {
            let e = self.plan.expected_count(self.first_conn + i, self.from, to);
            expected += e;
            missing += e.saturating_sub(c.got);
        }
        (expected, missing)
    }

    fn open(&self) -> usize {
        self.conns.iter().filter(|c| c.open).count()
    }
}

/// Runs a worker until its stdin closes.
pub async fn run() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context(
        "no configuration on stdin (herald-bench worker is started by herald-bench run)",
    )?;
    let cfg: WorkerConfig =
        serde_json::from_str(&first).context("parsing the worker configuration")?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(worker = cfg.worker, nofile = n, "open file limit raised"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let state = Rc::new(RefCell::new(State {
        plan: cfg.plan.clone(),
        first_conn: cfg.first_conn,
        conns: (0..cfg.conns).map(|_| Conn::default()).collect(),
        hist: histogram(),
        from: 0,
        report: PhaseReport::default(),
    }));
    let local = tokio::task::LocalSet::new();
    local.run_until(drive(cfg, state, &mut lines)).await
}

async fn drive(
    cfg: WorkerConfig,
    state: Rc<RefCell<State>>,
    lines: &mut tokio::io::Lines<BufReader<tokio::io::Stdin>>,
) -> Result<()> {
    let mut out = tokio::io::stdout();
    // One message per connection attempt, so the channel never fills.
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::channel::<Result<Duration, String>>(cfg.conns.max(1));
    let gate = Rc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let cfg = Rc::new(cfg);
    for local in 0..cfg.conns {
        let (cfg, state, gate, done) = (cfg.clone(), state.clone(), gate.clone(), done_tx.clone());
        tokio::task::spawn_local(async move {
            let global = cfg.first_conn + local;
            let endpoint = &cfg.endpoints[global % cfg.endpoints.len()];
            let rooms = cfg.plan.rooms_of(global);
            let permit = gate.acquire().await;
            let t0 = Instant::now();
            let res =
                targets::connect(cfg.target, endpoint, global, &rooms, cfg.secret.as_deref()).await;
            drop(permit);
            let (mut ws, mut decoder) = match res {
                Ok(x) => x,
                Err(e) => {
                    let _ = done.send(Err(format!("conn {global}: {e:#}"))).await;
                    return;
                }
            };
            state.borrow_mut().conns[local].open = true;
            let _ = done.send(Ok(t0.elapsed())).await;
            drop(done);
            let mut replies = Vec::new();
            let mut record = |seq, t| state.borrow_mut().record(local, seq, t);
            while let Some(Ok(msg)) = ws.next().await {
                match decoder.on_message(msg, &mut replies, &mut record) {
                    Ok(Frame::None) => {}
                    Ok(Frame::Closed) => break,
                    Err(e) => {
                        tracing::warn!(conn = global, error = %e, "protocol error");
                        break;
                    }
                }
                for r in replies.drain(..) {
                    if ws.send(r).await.is_err() {
                        break;
                    }
                }
            }
            state.borrow_mut().conns[local].open = false;
        });
    }
    drop(done_tx);
    let (mut joined, mut failed, mut errors) = (0, 0, Vec::new());
    let mut connect = histogram();
    while let Some(r) = done_rx.recv().await {
        match r {
            Ok(d) => {
                joined += 1;
                connect.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(e);
                }
            }
        }
    }
    tracing::info!(worker = cfg.worker, joined, failed, "connections ready");
    send(
        &mut out,
        &FromWorker::Ready {
            joined,
            failed,
            errors,
            connect_us: to_pairs(&connect),
        },
    )
    .await?;

    while let Some(line) = lines.next_line().await? {
        let cmd: ToWorker =
            serde_json::from_str(&line).with_context(|| format!("bad command {line}"))?;
        match cmd {
            ToWorker::Begin { from } => {
                state.borrow_mut().begin(from);
                send(&mut out, &FromWorker::Began).await?;
            }
            ToWorker::End { to, drain_ms } => {
                let deadline = Instant::now() + Duration::from_millis(drain_ms);
                // Poll: a delivery is one bit set by a connection task; the check
                // is cheap next to the deliveries themselves.
                while state.borrow().missing(to).1 > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let report = {
                    let mut s = state.borrow_mut();
                    let (expected, lost) = s.missing(to);
                    let mut r = std::mem::take(&mut s.report);
                    r.expected = expected;
                    r.lost = lost;
                    r.disconnected = s.conns.len() - s.open();
                    r.latency_us = to_pairs(&s.hist);
                    r
                };
                send(&mut out, &FromWorker::Phase(report)).await?;
            }
            ToWorker::Sample => {
                let open = state.borrow().open();
                send(&mut out, &FromWorker::Open { open }).await?;
            }
        }
    }
    Ok(())
}

async fn send(out: &mut tokio::io::Stdout, msg: &FromWorker) -> Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    out.write_all(&line)
        .await
        .context("writing to the coordinator")?;
    out.flush().await.context("writing to the coordinator")
}
