//! The coordinator (`herald-bench run` and `compare`): for each target in turn it
//! starts the target's processes, spawns worker processes and hands each its
//! share of the connections, waits until every connection has joined, then runs
//! the scenario — publishing at each `--rate` step and collecting what the
//! workers saw — and finally stops everything it started.
//!
//! A rate step is *good* when nothing was lost, duplicated or disconnected, p99
//! stayed within `--max-p99-ms` and the publisher reached 95 % of the asked rate.
//! Steps run in the order given and stop at the first bad one (unless
//! `--keep-going`); the maximum sustainable rate is the last good step. The same
//! rule applies to every target.

use crate::procstat::{self, RssSampler};
use crate::protocol::{FromWorker, PhaseReport, ToWorker, WorkerConfig};
use crate::report::{Churn, Idle, Percentiles, RunReport, Step, Storm, TargetReport};
use crate::scenarios::{Plan, Scenario};
use crate::targets::{self, Publisher, Running, StartOpts, TargetKind};
use crate::worker::histogram;
use anyhow::{Context as _, Result, bail};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Connections one worker process holds at most (20,000 open files allowed).
pub const MAX_CONNS_PER_WORKER: usize = 15_000;

/// Options shared by `run` and `compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(long, value_enum, default_value = "broadcast")]
    pub scenario: Scenario,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Worker processes [default: max(2, ceil(conns / 15000))]; each holds at most 15,000 connections.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Event payload size in bytes (JSON, padded).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Events per second; a comma-separated list runs one step per rate, in order (a ramp).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub rate: Vec<u64>,
    /// Publishing time of each step, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up before the first step, seconds, at the first rate (lets JITs and allocators settle; 0 to skip).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// After the last publish, how long to wait for missing events before counting them lost, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// A step whose p99 latency exceeds this (ms) is not sustainable.
    #[arg(long, default_value_t = 1000.0)]
    pub max_p99_ms: f64,
    /// Run the whole comparison this many times (targets in turn each round); the summary adds medians.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Run every rate step even after one fails.
    #[arg(long)]
    pub keep_going: bool,
    /// Shared rooms every connection also joins (targeted scenario).
    #[arg(long, default_value_t = 4)]
    pub shared_rooms: usize,
    /// How long idle connections are held before memory is read (idle scenario), seconds.
    #[arg(long, default_value_t = 5.0)]
    pub idle_secs: f64,
    /// Connections opened (and closed) per second in total (churn scenario).
    #[arg(long, default_value_t = 200.0)]
    pub churn_rate: f64,
    /// Events published while the clients are away (reconnect-storm scenario).
    #[arg(long, default_value_t = 100)]
    pub missed: u64,
    /// How long the reconnected clients get to receive every missed event (reconnect-storm), seconds.
    #[arg(long, default_value_t = 60.0)]
    pub storm_timeout: f64,
    /// WebSocket handshakes in flight at once, per worker.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// The herald binary (build it with `cargo build --release -p herald`).
    #[arg(long, default_value = "target/release/herald")]
    pub herald_bin: PathBuf,
    /// Extra environment for `herald serve` and `herald setup`, as KEY=VALUE (repeatable).
    #[arg(long = "herald-env", value_parser = parse_kv)]
    pub herald_env: Vec<(String, String)>,
    /// The Socket.IO peer server script.
    #[arg(long, default_value = "bench/peers/socketio/server.js")]
    pub socketio_server: PathBuf,
    /// Directory for the JSON results (servers' logs go to its `logs/`).
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s}"))
}

/// Runs the scenario against each target in turn; writes the JSON and prints the
/// Markdown. A target that fails is reported and the next one still runs.
pub async fn run(targets: &[TargetKind], args: &BenchArgs) -> Result<RunReport> {
    if args.conns == 0 || args.rate.is_empty() || args.rate.contains(&0) {
        bail!("--conns and every --rate must be greater than 0");
    }
    let mut report = RunReport {
        started: crate::report::utc_stamp(),
        command: std::env::args().collect(),
        scenario: args.scenario.name().into(),
        conns: args.conns,
        size: args.size,
        machine: crate::report::Machine::detect(),
        targets: Vec::new(),
    };
    // Rounds run every target once each, in turn, so drifting load on a shared
    // machine falls on all targets alike.
    for round in 0..args.repeat.max(1) {
        for &kind in targets {
            tracing::info!(
                target = kind.name(),
                scenario = args.scenario.name(),
                conns = args.conns,
                round,
                "starting"
            );
            let t = match run_target(kind, args).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(
                        target = kind.name(),
                        error = format!("{e:#}"),
                        "target failed"
                    );
                    TargetReport {
                        target: kind.name().into(),
                        error: Some(format!("{e:#}")),
                        ..TargetReport::default()
                    }
                }
            };
            let t = TargetReport { round, ..t };
            report.targets.push(t);
        }
    }
    let path = report.write_json(&args.out_dir)?;
    println!("{}", report.markdown());
    println!("results: {}", path.display());
    Ok(report)
}

/// One worker process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn send(&mut self, cmd: &impl serde::Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .context("writing to a worker")?;
        self.stdin.flush().await.context("writing to a worker")
    }

    async fn recv(&mut self) -> Result<FromWorker> {
        let line = self
            .lines
            .next_line()
            .await
            .context("reading from a worker")?
            .context("a worker exited (see its log above)")?;
        serde_json::from_str(&line).with_context(|| format!("bad worker message {line}"))
    }
}

async fn spawn_workers(running: &Running, args: &BenchArgs, plan: &Plan) -> Result<Vec<Worker>> {
    let needed = args.conns.div_ceil(MAX_CONNS_PER_WORKER);
    let n = args
        .workers
        .unwrap_or(needed.max(2))
        .max(needed)
        .min(args.conns);
    let exe = std::env::current_exe().context("finding herald-bench's own path")?;
    let mut workers = Vec::with_capacity(n);
    let mut first = 0;
    for w in 0..n {
        let conns = args.conns / n + usize::from(w < args.conns % n);
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut worker = Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        worker
            .send(&WorkerConfig {
                worker: w,
                target: running.kind,
                endpoints: running.endpoints.clone(),
                first_conn: first,
                conns,
                plan: plan.clone(),
                secret: running.secret.clone(),
                connect_concurrency: args.connect_concurrency,
            })
            .await?;
        first += conns;
        workers.push(worker);
    }
    Ok(workers)
}

async fn run_target(kind: TargetKind, args: &BenchArgs) -> Result<TargetReport> {
    let opts = StartOpts {
        herald_bin: args.herald_bin.clone(),
        herald_env: args.herald_env.clone(),
        socketio_server: args.socketio_server.clone(),
        log_dir: args.out_dir.join("logs"),
    };
    // Only Herald resumes from a cursor (scenarios/storm.rs): the others are
    // reported as not applicable without being started.
    if args.scenario == Scenario::ReconnectStorm && kind != TargetKind::Herald {
        let mut report = TargetReport {
            target: kind.name().into(),
            ..TargetReport::default()
        };
        storm_not_applicable(&mut report);
        return Ok(report);
    }
    let mut running = targets::start(kind, &opts).await?;
    let procs = running.procs();
    let plan = args.scenario.plan(args.conns, args.shared_rooms);
    let mut report = TargetReport {
        target: kind.name().into(),
        procs: procs.clone(),
        conns: args.conns,
        ..TargetReport::default()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = procstat::total_rss(&procs);

    let t0 = Instant::now();
    let mut workers = spawn_workers(&running, args, &plan).await?;
    report.workers = workers.len();
    let mut connect = histogram();
    let (mut joined, mut failed, mut errors) = (0, 0, Vec::new());
    for w in &mut workers {
        match w.recv().await? {
            FromWorker::Ready {
                joined: j,
                failed: f,
                errors: e,
                connect_us,
            } => {
                joined += j;
                failed += f;
                errors.extend(e);
                for (v, c) in connect_us {
                    connect.saturating_record_n(v, c);
                }
            }
            other => bail!("unexpected worker message {other:?}"),
        }
    }
    report.connect_ms = Percentiles::of(&connect);
    tracing::info!(
        target = kind.name(),
        joined,
        failed,
        secs = t0.elapsed().as_secs_f64(),
        "connections joined"
    );
    if failed > 0 {
        bail!(
            "{failed} of {} connections failed to join, e.g. {}",
            args.conns,
            errors.join("; ")
        );
    }
    running.check_alive()?;

    if args.scenario == Scenario::Churn {
        report.churn = Some(churn(&mut workers, &running, args).await?);
        return Ok(report);
    }
    if args.scenario == Scenario::ReconnectStorm {
        let mut publisher = Publisher::connect(&running).await?;
        report.storm = Some(storm(&mut workers, &mut publisher, &running, &plan, args).await?);
        return Ok(report);
    }
    if args.scenario == Scenario::Idle {
        let meter = Meter::start(&running);
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
        let (_, idle_cpu_pct, _, rss_after) = meter.stop();
        let mut open_after = 0;
        for w in &mut workers {
            w.send(&ToWorker::Sample).await?;
            if let FromWorker::Open { open } = w.recv().await? {
                open_after += open;
            }
        }
        report.idle = Some(Idle {
            conns: args.conns,
            rss_before,
            rss_after,
            bytes_per_conn: rss_after.saturating_sub(rss_before) as f64 / args.conns as f64,
            open_after,
            idle_cpu_pct,
        });
        return Ok(report);
    }

    let mut publisher = Publisher::connect(&running).await?;
    let mut seq = 0u64;
    if args.warmup > 0.0 {
        let (w, p, r) = (&mut workers, &mut publisher, &running);
        let warm = run_step(w, p, r, &plan, args, args.rate[0], args.warmup, &mut seq).await?;
        tracing::info!(
            target = kind.name(),
            good = warm.good,
            verdict = warm.verdict,
            "warm-up done (not reported)"
        );
    }
    for &rate in &args.rate {
        let (w, p, r) = (&mut workers, &mut publisher, &running);
        let step = run_step(w, p, r, &plan, args, rate, args.duration, &mut seq).await?;
        tracing::info!(
            target = kind.name(),
            rate,
            deliveries_per_s = step.deliveries_per_s as u64,
            p99_ms = step.latency_ms.p99,
            lost = step.lost,
            dup = step.duplicates,
            good = step.good,
            "step done"
        );
        let good = step.good;
        report.steps.push(step);
        if good {
            if report.steps.iter().all(|s| s.good) {
                report.max_sustainable_rate = Some(rate);
            }
        } else if !args.keep_going {
            break;
        }
        running.check_alive()?;
    }
    drop(publisher);
    drop(workers);
    drop(running);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    workers: &mut [Worker],
    publisher: &mut Publisher,
    running: &Running,
    plan: &Plan,
    args: &BenchArgs,
    rate: u64,
    duration_s: f64,
    seq: &mut u64,
) -> Result<Step> {
    let from = *seq;
    for w in workers.iter_mut() {
        w.send(&ToWorker::Begin { from }).await?;
    }
    for w in workers.iter_mut() {
        match w.recv().await? {
            FromWorker::Began => {}
            other => bail!("unexpected worker message {other:?}"),
        }
    }
    let procs = running.procs();
    let cpu0 = procstat::cpu_snapshot(&procs);
    // The bench's own CPU (workers and this process), to show when the client,
    // not the server, is what runs out of CPU.
    let bench: Vec<procstat::Proc> = workers
        .iter()
        .filter_map(|w| w.child.id())
        .chain([std::process::id()])
        .map(|pid| procstat::Proc {
            name: "bench".into(),
            pid,
        })
        .collect();
    let bench0: f64 = procstat::cpu_snapshot(&bench).iter().sum();
    let sampler = RssSampler::start(procs.clone());
    let start_ns = crate::payload::now_ns();
    let start = Instant::now();
    let duration = Duration::from_secs_f64(duration_s);

    // Pacing: every millisecond, publish what is due by now, then flush once.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut published = 0u64;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (rate as f64 * elapsed.as_secs_f64()) as u64;
        while published < due {
            let s = from + published;
            let payload = crate::payload::encode(s, crate::payload::now_ns(), args.size);
            publisher.publish(&plan.room_of_event(s), payload).await?;
            published += 1;
        }
        publisher.flush().await?;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let publish_failed = publisher.settle().await?;
    *seq = from + published;

    let drain_ms = (args.drain * 1000.0) as u64;
    for w in workers.iter_mut() {
        w.send(&ToWorker::End { to: *seq, drain_ms }).await?;
    }
    let mut total = PhaseReport::default();
    let mut hist = histogram();
    for w in workers.iter_mut() {
        let r = match w.recv().await? {
            FromWorker::Phase(r) => r,
            other => bail!("unexpected worker message {other:?}"),
        };
        total.deliveries += r.deliveries;
        total.expected += r.expected;
        total.lost += r.lost;
        total.duplicates += r.duplicates;
        total.unexpected += r.unexpected;
        total.disconnected += r.disconnected;
        total.last_recv_ns = total.last_recv_ns.max(r.last_recv_ns);
        for (v, c) in r.latency_us {
            hist.saturating_record_n(v, c);
        }
    }
    let cpu1 = procstat::cpu_snapshot(&procs);
    let bench_cpu_s = procstat::cpu_snapshot(&bench).iter().sum::<f64>() - bench0;
    // From the first publish to the last receipt (at least the publishing time).
    let publish_end_ns = start_ns + (publish_secs * 1e9) as u64;
    let wall = (total.last_recv_ns.max(publish_end_ns) - start_ns) as f64 / 1e9;
    let cpu_by_proc: Vec<(String, f64)> = procs
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|(p, (a, b))| (p.name.clone(), b - a))
        .collect();
    let cpu_s: f64 = cpu_by_proc.iter().map(|(_, c)| c).sum();
    let latency_ms = Percentiles::of(&hist);
    let publish_rate = published as f64 / publish_secs;
    let mut why = Vec::new();
    if total.lost > 0 {
        why.push(format!("{} lost", total.lost));
    }
    if total.duplicates > 0 {
        why.push(format!("{} duplicated", total.duplicates));
    }
    if total.unexpected > 0 {
        why.push(format!("{} misrouted", total.unexpected));
    }
    if total.disconnected > 0 {
        why.push(format!("{} disconnected", total.disconnected));
    }
    if publish_failed > 0 {
        why.push(format!("{publish_failed} publishes failed"));
    }
    if latency_ms.p99 > args.max_p99_ms {
        why.push(format!(
            "p99 {:.0} ms > {} ms",
            latency_ms.p99, args.max_p99_ms
        ));
    }
    if publish_rate < 0.95 * rate as f64 {
        why.push(format!("published only {publish_rate:.0}/s"));
    }
    Ok(Step {
        rate,
        duration_s: publish_secs,
        published,
        publish_rate,
        publish_failed,
        deliveries: total.deliveries,
        expected: total.expected,
        deliveries_per_s: total.deliveries as f64 / wall,
        latency_ms,
        lost: total.lost,
        duplicates: total.duplicates,
        unexpected: total.unexpected,
        disconnected: total.disconnected,
        cpu_s,
        cpu_pct: 100.0 * cpu_s / wall,
        cpu_by_proc,
        bench_cpu_pct: 100.0 * bench_cpu_s / wall,
        rss_peak: sampler.peak(),
        rss_final: procstat::total_rss(&procs),
        good: why.is_empty(),
        verdict: why.join(", "),
    })
}

/// Marks a target to which the reconnect storm does not apply.
fn storm_not_applicable(report: &mut TargetReport) {
    report.note = Some("n/a: no cursor resume (keeps no history to replay)".into());
}

/// Server CPU and peak memory over one measured stretch.
struct Meter {
    procs: Vec<procstat::Proc>,
    cpu0: Vec<f64>,
    sampler: RssSampler,
    start: Instant,
}

impl Meter {
    fn start(running: &Running) -> Self {
        let procs = running.procs();
        Self {
            cpu0: procstat::cpu_snapshot(&procs),
            sampler: RssSampler::start(procs.clone()),
            procs,
            start: Instant::now(),
        }
    }

    /// (CPU seconds, percent of a core, peak RSS, final RSS).
    fn stop(self) -> (f64, f64, u64, u64) {
        let cpu1 = procstat::cpu_snapshot(&self.procs);
        let cpu: f64 = cpu1.iter().zip(&self.cpu0).map(|(b, a)| b - a).sum();
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        (
            cpu,
            100.0 * cpu / wall,
            self.sampler.peak(),
            procstat::total_rss(&self.procs),
        )
    }
}

async fn churn(workers: &mut [Worker], running: &Running, args: &BenchArgs) -> Result<Churn> {
    let meter = Meter::start(running);
    let per_worker = args.churn_rate / workers.len() as f64;
    let duration_ms = (args.duration * 1000.0) as u64;
    for (i, w) in workers.iter_mut().enumerate() {
        let first_id =
            crate::scenarios::churn::FIRST_ID + i * crate::scenarios::churn::IDS_PER_WORKER;
        w.send(&ToWorker::Churn {
            rate: per_worker,
            duration_ms,
            first_id,
        })
        .await?;
    }
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    let mut hist = histogram();
    for w in workers.iter_mut() {
        match w.recv().await? {
            FromWorker::Churned {
                ok: o,
                failed: f,
                errors: e,
                connect_us,
            } => {
                ok += o;
                failed += f;
                errors.extend(e);
                for (v, c) in connect_us {
                    hist.saturating_record_n(v, c);
                }
            }
            other => bail!("unexpected worker message {other:?}"),
        }
    }
    let elapsed = meter.start.elapsed().as_secs_f64();
    let (cpu_s, cpu_pct, rss_peak, rss_final) = meter.stop();
    errors.truncate(5);
    Ok(Churn {
        rate: args.churn_rate,
        duration_s: args.duration,
        ok,
        failed,
        connects_per_s: ok as f64 / elapsed,
        connect_ms: Percentiles::of(&hist),
        cpu_s,
        cpu_pct,
        rss_peak,
        rss_final,
        errors,
    })
}

async fn storm(
    workers: &mut [Worker],
    publisher: &mut Publisher,
    running: &Running,
    plan: &Plan,
    args: &BenchArgs,
) -> Result<Storm> {
    for w in workers.iter_mut() {
        w.send(&ToWorker::Drop).await?;
    }
    for w in workers.iter_mut() {
        match w.recv().await? {
            FromWorker::Dropped => {}
            other => bail!("unexpected worker message {other:?}"),
        }
    }
    tracing::info!(missed = args.missed, "all clients dropped; publishing");
    for seq in 0..args.missed {
        let payload = crate::payload::encode(seq, crate::payload::now_ns(), args.size);
        publisher.publish(&plan.room_of_event(seq), payload).await?;
    }
    let publish_failed = publisher.settle().await?;
    if publish_failed > 0 {
        bail!("{publish_failed} of the missed events were not acknowledged");
    }
    let meter = Meter::start(running);
    let timeout_ms = (args.storm_timeout * 1000.0) as u64;
    for w in workers.iter_mut() {
        w.send(&ToWorker::Resume {
            from: 0,
            to: args.missed,
            timeout_ms,
        })
        .await?;
    }
    let mut total = PhaseReport::default();
    for w in workers.iter_mut() {
        match w.recv().await? {
            FromWorker::Phase(r) => {
                total.deliveries += r.deliveries;
                total.expected += r.expected;
                total.lost += r.lost;
                total.duplicates += r.duplicates;
                total.failed += r.failed;
                total.errors.extend(r.errors);
            }
            other => bail!("unexpected worker message {other:?}"),
        }
    }
    let catchup_s = meter.start.elapsed().as_secs_f64();
    let (cpu_s, cpu_pct, rss_peak, rss_final) = meter.stop();
    total.errors.truncate(5);
    Ok(Storm {
        clients: args.conns,
        missed: args.missed,
        expected: total.expected,
        deliveries: total.deliveries,
        lost: total.lost,
        duplicates: total.duplicates,
        failed: total.failed,
        complete: total.lost == 0 && total.failed == 0,
        catchup_s,
        cpu_s,
        cpu_pct,
        rss_peak,
        rss_final,
        errors: total.errors,
    })
}
