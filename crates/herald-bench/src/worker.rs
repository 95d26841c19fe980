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
use crate::targets::{self, Cursor, Frame};
use anyhow::{Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
    /// Where the connection was at its first join (Herald), for resuming.
    cursor: Option<Cursor>,
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

/// What a worker's tasks share.
struct Ctx {
    cfg: WorkerConfig,
    state: Rc<RefCell<State>>,
    /// Bounds handshakes in flight.
    gate: Semaphore,
}

/// Outcome of one connection attempt: time to joined, or why it failed.
type Outcome = Result<Duration, String>;

/// Counts of a batch of connection attempts.
struct Opened {
    joined: usize,
    failed: usize,
    errors: Vec<String>,
    connect: Histogram<u64>,
}

impl Opened {
    async fn collect(mut rx: tokio::sync::mpsc::Receiver<Outcome>) -> Self {
        let mut o = Opened {
            joined: 0,
            failed: 0,
            errors: Vec::new(),
            connect: histogram(),
        };
        while let Some(r) = rx.recv().await {
            match r {
                Ok(d) => {
                    o.joined += 1;
                    o.connect
                        .saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
                }
                Err(e) => {
                    o.failed += 1;
                    if o.errors.len() < 5 {
                        o.errors.push(e);
                    }
                }
            }
        }
        o
    }
}

/// Opens every connection of this worker (resuming from the saved cursors when
/// `resume`), and returns once every attempt has finished.
async fn open_all(ctx: &Rc<Ctx>, cancel: &CancellationToken, resume: bool) -> Opened {
    // One message per attempt, so the channel never fills.
    let (tx, rx) = tokio::sync::mpsc::channel::<Outcome>(ctx.cfg.conns.max(1));
    for local in 0..ctx.cfg.conns {
        let since = if resume {
            ctx.state.borrow().conns[local].cursor.clone()
        } else {
            None
        };
        tokio::task::spawn_local(hold(ctx.clone(), local, since, cancel.clone(), tx.clone()));
    }
    drop(tx);
    Opened::collect(rx).await
}

/// One subscriber: connect and join, report the outcome, then read until the
/// server closes or `cancel` fires.
async fn hold(
    ctx: Rc<Ctx>,
    local: usize,
    since: Option<Cursor>,
    cancel: CancellationToken,
    done: tokio::sync::mpsc::Sender<Outcome>,
) {
    let cfg = &ctx.cfg;
    let global = cfg.first_conn + local;
    let endpoint = &cfg.endpoints[global % cfg.endpoints.len()];
    let rooms = cfg.plan.rooms_of(global);
    let permit = ctx.gate.acquire().await;
    let t0 = Instant::now();
    let res = targets::connect(
        cfg.target,
        endpoint,
        global,
        &rooms,
        cfg.secret.as_deref(),
        since.as_ref(),
    )
    .await;
    drop(permit);
    let joined = match res {
        Ok(j) => j,
        Err(e) => {
            let _ = done.send(Err(format!("conn {global}: {e:#}"))).await;
            return;
        }
    };
    let (mut ws, mut decoder) = (joined.ws, joined.decoder);
    {
        let mut s = ctx.state.borrow_mut();
        let c = &mut s.conns[local];
        c.open = true;
        if since.is_none() {
            c.cursor = joined.cursor;
        }
    }
    let _ = done.send(Ok(t0.elapsed())).await;
    drop(done);
    let mut replies = Vec::new();
    let state = &ctx.state;
    let mut record = |seq, t| state.borrow_mut().record(local, seq, t);
    loop {
        let msg = tokio::select! {
            () = cancel.cancelled() => {
                let _ = ws.close(None).await;
                break;
            }
            m = ws.next() => match m {
                Some(Ok(m)) => m,
                _ => break,
            },
        };
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
    ctx.state.borrow_mut().conns[local].open = false;
}

/// Churn: opens connections at `rate` per second for `duration`, each joining
/// then closing at once; ids from `first_id` up (fresh users, fresh tokens).
async fn churn(ctx: &Rc<Ctx>, rate: f64, duration: Duration, first_id: usize) -> Opened {
    let (tx, rx) = tokio::sync::mpsc::channel::<Outcome>(1024);
    let collector = tokio::task::spawn_local(Opened::collect(rx));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut opened = 0usize;
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (rate * start.elapsed().as_secs_f64()) as usize;
        while opened < due {
            let id = first_id + opened;
            let (ctx, tx) = (ctx.clone(), tx.clone());
            tokio::task::spawn_local(async move {
                let cfg = &ctx.cfg;
                let endpoint = &cfg.endpoints[id % cfg.endpoints.len()];
                let rooms = cfg.plan.rooms_of(id);
                let permit = ctx.gate.acquire().await;
                let t0 = Instant::now();
                let res = targets::connect(
                    cfg.target,
                    endpoint,
                    id,
                    &rooms,
                    cfg.secret.as_deref(),
                    None,
                )
                .await;
                drop(permit);
                let outcome = match res {
                    Ok(mut j) => {
                        let d = t0.elapsed();
                        let _ = j.ws.close(None).await;
                        Ok(d)
                    }
                    Err(e) => Err(format!("churn conn {id}: {e:#}")),
                };
                // The collector drains continuously; waiting here is brief.
                let _ = tx.send(outcome).await;
            });
            opened += 1;
        }
    }
    drop(tx);
    match collector.await {
        Ok(o) => o,
        Err(e) => Opened {
            joined: 0,
            failed: opened,
            errors: vec![format!("churn collector: {e}")],
            connect: histogram(),
        },
    }
}

async fn drive(
    cfg: WorkerConfig,
    state: Rc<RefCell<State>>,
    lines: &mut tokio::io::Lines<BufReader<tokio::io::Stdin>>,
) -> Result<()> {
    let mut out = tokio::io::stdout();
    let ctx = Rc::new(Ctx {
        gate: Semaphore::new(cfg.connect_concurrency.max(1)),
        cfg,
        state: state.clone(),
    });
    let mut cancel = CancellationToken::new();
    let o = open_all(&ctx, &cancel, false).await;
    tracing::info!(
        worker = ctx.cfg.worker,
        joined = o.joined,
        failed = o.failed,
        "connections ready"
    );
    send(
        &mut out,
        &FromWorker::Ready {
            joined: o.joined,
            failed: o.failed,
            errors: o.errors,
            connect_us: to_pairs(&o.connect),
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
                let report = finish_phase(&state, to, drain_ms).await;
                send(&mut out, &FromWorker::Phase(report)).await?;
            }
            ToWorker::Sample => {
                let open = state.borrow().open();
                send(&mut out, &FromWorker::Open { open }).await?;
            }
            ToWorker::Drop => {
                cancel.cancel();
                while state.borrow().open() > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                cancel = CancellationToken::new();
                send(&mut out, &FromWorker::Dropped).await?;
            }
            ToWorker::Resume {
                from,
                to,
                timeout_ms,
            } => {
                state.borrow_mut().begin(from);
                let o = open_all(&ctx, &cancel, true).await;
                let mut report = finish_phase(&state, to, timeout_ms).await;
                report.failed = o.failed;
                report.errors = o.errors;
                send(&mut out, &FromWorker::Phase(report)).await?;
            }
            ToWorker::Churn {
                rate,
                duration_ms,
                first_id,
            } => {
                let o = churn(&ctx, rate, Duration::from_millis(duration_ms), first_id).await;
                send(
                    &mut out,
                    &FromWorker::Churned {
                        ok: o.joined,
                        failed: o.failed,
                        errors: o.errors,
                        connect_us: to_pairs(&o.connect),
                    },
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Waits until every connection has every expected event of `[from, to)` or
/// `wait_ms` passed, then takes the phase's report.
async fn finish_phase(state: &Rc<RefCell<State>>, to: u64, wait_ms: u64) -> PhaseReport {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    // Poll: a delivery is one bit set by a connection task; the check is cheap
    // next to the deliveries themselves.
    while state.borrow().missing(to).1 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut s = state.borrow_mut();
    let (expected, lost) = s.missing(to);
    let mut r = std::mem::take(&mut s.report);
    r.expected = expected;
    r.lost = lost;
    r.disconnected = s.conns.len() - s.open();
    r.latency_us = to_pairs(&s.hist);
    r
}

async fn send(out: &mut tokio::io::Stdout, msg: &FromWorker) -> Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    out.write_all(&line)
        .await
        .context("writing to the coordinator")?;
    out.flush().await.context("writing to the coordinator")
}
