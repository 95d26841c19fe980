//! Results: the JSON written to `bench/results/<timestamp>-<scenario>.json` and
//! the Markdown tables printed to stdout (BENCHMARKS.md explains each column).

use crate::procstat::Proc;
use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One rate step of a broadcast or targeted run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    /// Asked rate, events per second.
    pub rate: u64,
    /// Publishing time, seconds.
    pub duration_s: f64,
    /// Events published.
    pub published: u64,
    /// Events published per second, as achieved.
    pub publish_rate: f64,
    /// Publishes the target refused (JetStream acks that failed).
    pub publish_failed: u64,
    /// Events received by subscribers (duplicates included).
    pub deliveries: u64,
    /// Deliveries the scenario called for.
    pub expected: u64,
    /// Deliveries per second, from the first publish to the last receipt.
    pub deliveries_per_s: f64,
    /// End-to-end latency, publish to receipt.
    pub latency_ms: Percentiles,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries of an event a connection already had.
    pub duplicates: u64,
    /// Deliveries to a connection that should not get them.
    pub unexpected: u64,
    /// Connections closed by the target by the end of the step.
    pub disconnected: usize,
    /// CPU seconds of the target's processes over the step.
    pub cpu_s: f64,
    /// Same, as percent of one core over the step's wall time.
    pub cpu_pct: f64,
    /// CPU seconds per process.
    pub cpu_by_proc: Vec<(String, f64)>,
    /// CPU of the bench itself (workers + coordinator), percent of one core.
    pub bench_cpu_pct: f64,
    /// Highest summed resident memory during the step, bytes.
    pub rss_peak: u64,
    /// Summed resident memory at the end, bytes.
    pub rss_final: u64,
    /// No loss, no duplicate, no disconnect, p99 within the limit, rate reached.
    pub good: bool,
    /// Why the step is not good.
    pub verdict: String,
}

/// Memory per idle connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    /// Connections held.
    pub conns: usize,
    /// Summed RSS of the target before any connection, bytes.
    pub rss_before: u64,
    /// Summed RSS with every connection joined and idle, bytes.
    pub rss_after: u64,
    /// `(rss_after - rss_before) / conns`.
    pub bytes_per_conn: f64,
    /// Connections still open at the end.
    pub open_after: usize,
    /// Server CPU while the connections sat idle, percent of one core.
    pub idle_cpu_pct: f64,
}

/// Churn results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Churn {
    /// Asked connects per second.
    pub rate: f64,
    /// Churn time, seconds.
    pub duration_s: f64,
    /// Connections that joined.
    pub ok: usize,
    /// Connections that failed.
    pub failed: usize,
    /// Joined connections per second, as achieved.
    pub connects_per_s: f64,
    /// Connect-to-joined latency.
    pub connect_ms: Percentiles,
    /// Server CPU seconds over the churn.
    pub cpu_s: f64,
    /// Same, percent of one core.
    pub cpu_pct: f64,
    /// Peak summed RSS, bytes.
    pub rss_peak: u64,
    /// Final summed RSS, bytes.
    pub rss_final: u64,
    /// The first few failures.
    pub errors: Vec<String>,
}

/// Reconnect storm results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Storm {
    /// Clients that dropped and came back.
    pub clients: usize,
    /// Events published while they were away.
    pub missed: u64,
    /// Deliveries expected after the reconnect.
    pub expected: u64,
    /// Deliveries received.
    pub deliveries: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries of an event a client already had.
    pub duplicates: u64,
    /// Reconnections that failed or were not `recovered`.
    pub failed: usize,
    /// Every client got every missed event.
    pub complete: bool,
    /// From the reconnect order until the last client had everything, seconds.
    pub catchup_s: f64,
    /// Server CPU seconds over the storm.
    pub cpu_s: f64,
    /// Same, percent of one core.
    pub cpu_pct: f64,
    /// Peak summed RSS, bytes.
    pub rss_peak: u64,
    /// Final summed RSS, bytes.
    pub rss_final: u64,
    /// The first few failures.
    pub errors: Vec<String>,
}

/// Everything measured against one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetReport {
    /// Target name.
    pub target: String,
    /// Round of `--repeat` (0-based).
    pub round: usize,
    /// Its processes.
    pub procs: Vec<Proc>,
    /// Subscriber connections.
    pub conns: usize,
    /// Worker processes.
    pub workers: usize,
    /// Connect-to-joined time per connection.
    pub connect_ms: Percentiles,
    /// Rate steps (broadcast, targeted).
    pub steps: Vec<Step>,
    /// Highest rate of a good step before the first bad one.
    pub max_sustainable_rate: Option<u64>,
    /// Idle scenario results.
    pub idle: Option<Idle>,
    /// Churn results.
    pub churn: Option<Churn>,
    /// Reconnect storm results.
    pub storm: Option<Storm>,
    /// Why the scenario does not apply to this target.
    pub note: Option<String>,
    /// Why the run against this target stopped, if it failed.
    pub error: Option<String>,
}

impl TargetReport {
    /// The good step at the maximum sustainable rate.
    pub fn best(&self) -> Option<&Step> {
        let r = self.max_sustainable_rate?;
        self.steps.iter().find(|s| s.rate == r && s.good)
    }
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// MemTotal, bytes.
    pub mem_total: u64,
}

impl Machine {
    /// Reads /proc.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split(':').nth(1))
            })
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let mem_total = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            kernel,
            mem_total,
        }
    }
}

/// One invocation of `run` or `compare`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// UTC start, `YYYYMMDDTHHMMSSZ`.
    pub started: String,
    /// The command line.
    pub command: Vec<String>,
    /// Scenario name.
    pub scenario: String,
    /// Subscriber connections.
    pub conns: usize,
    /// Payload size, bytes.
    pub size: usize,
    /// The machine.
    pub machine: Machine,
    /// One report per target, in the order run.
    pub targets: Vec<TargetReport>,
}

impl RunReport {
    /// Herald's deliveries/s at its maximum sustainable rate over `t`'s at its
    /// own, both from `t`'s round.
    pub fn ratio(&self, t: &TargetReport) -> Option<f64> {
        let herald = self
            .targets
            .iter()
            .find(|h| h.target == "herald" && h.round == t.round)
            .and_then(TargetReport::best)?;
        let b = t.best()?;
        (b.deliveries_per_s > 0.0).then(|| herald.deliveries_per_s / b.deliveries_per_s)
    }

    /// Writes `<dir>/<started>-<scenario>.json`; returns its path.
    pub fn write_json(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}-{}.json", self.started, self.scenario));
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The Markdown tables.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "### {} — {} connections, {} B events ({}; {} CPUs, {}, kernel {})\n",
            self.scenario, self.conns, self.size, self.started, m.nproc, m.cpu_model, m.kernel
        );
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        if self.targets.iter().any(|t| !t.steps.is_empty()) {
            o.push_str("| target | rate ev/s | published ev/s | deliveries/s | p50 ms | p99 ms | p99.9 ms | lost | dup | disc. | server CPU s (% of a core) | bench CPU % | peak RSS MiB | final RSS MiB | ok |\n");
            o.push_str(
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
            );
            for t in &self.targets {
                for s in &t.steps {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.2} ({:.0} %) | {:.0} | {:.1} | {:.1} | {} |",
                        label(t),
                        s.rate,
                        s.publish_rate,
                        s.deliveries_per_s,
                        s.latency_ms.p50,
                        s.latency_ms.p99,
                        s.latency_ms.p999,
                        s.lost,
                        s.duplicates,
                        s.disconnected,
                        s.cpu_s,
                        s.cpu_pct,
                        s.bench_cpu_pct,
                        mib(s.rss_peak),
                        mib(s.rss_final),
                        if s.good {
                            "yes".to_string()
                        } else {
                            format!("no: {}", s.verdict)
                        },
                    );
                }
            }
            o.push('\n');
            let rounds = self.targets.iter().map(|t| t.round + 1).max().unwrap_or(1);
            o.push_str("| target | round | max sustainable rate ev/s | deliveries/s there | p99 ms there | server CPU % there | server CPU µs per delivery there | Herald ÷ target (deliveries/s) |\n");
            o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
            for t in &self.targets {
                let best = t.best();
                let ratio = self.ratio(t).map_or("–".into(), |r| format!("{r:.2}"));
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.target,
                    t.round + 1,
                    t.max_sustainable_rate
                        .map_or("none".into(), |r| r.to_string()),
                    best.map_or("–".into(), |s| format!("{:.0}", s.deliveries_per_s)),
                    best.map_or("–".into(), |s| format!("{:.2}", s.latency_ms.p99)),
                    best.map_or("–".into(), |s| format!("{:.0}", s.cpu_pct)),
                    best.map_or("–".into(), |s| {
                        format!("{:.2}", 1e6 * s.cpu_s / s.deliveries.max(1) as f64)
                    }),
                    ratio,
                );
            }
            if rounds > 1 {
                o.push_str("\n| target | rounds | median max sustainable rate ev/s | median Herald ÷ target |\n");
                o.push_str("|---|---:|---:|---:|\n");
                let mut names: Vec<&str> = Vec::new();
                for t in &self.targets {
                    if !names.contains(&t.target.as_str()) {
                        names.push(&t.target);
                    }
                }
                for name in names {
                    let of = || self.targets.iter().filter(move |t| t.target == name);
                    let rates: Vec<f64> = of()
                        .map(|t| t.max_sustainable_rate.map_or(0.0, |r| r as f64))
                        .collect();
                    let ratios: Vec<f64> = of().filter_map(|t| self.ratio(t)).collect();
                    let _ = writeln!(
                        o,
                        "| {name} | {} | {} | {} |",
                        rates.len(),
                        median(&rates).map_or("–".into(), |m| format!("{m:.0}")),
                        median(&ratios).map_or("–".into(), |m| format!("{m:.2}")),
                    );
                }
            }
        }
        if self.targets.iter().any(|t| t.idle.is_some()) {
            o.push_str("| target | idle conns | RSS before MiB | RSS after MiB | KiB per connection | still open | server CPU % while idle |\n");
            o.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            for t in &self.targets {
                if let Some(i) = &t.idle {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {:.1} | {:.1} | {:.2} | {} | {:.1} |",
                        t.target,
                        i.conns,
                        mib(i.rss_before),
                        mib(i.rss_after),
                        i.bytes_per_conn / 1024.0,
                        i.open_after,
                        i.idle_cpu_pct
                    );
                }
            }
        }
        if self.targets.iter().any(|t| t.churn.is_some()) {
            o.push_str("| target | asked conn/s | joined conn/s | failed | connect p50 ms | connect p99 ms | server CPU s (% of a core) | peak RSS MiB |\n");
            o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
            for t in &self.targets {
                if let Some(c) = &t.churn {
                    let _ = writeln!(
                        o,
                        "| {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} ({:.0} %) | {:.1} |",
                        t.target,
                        c.rate,
                        c.connects_per_s,
                        c.failed,
                        c.connect_ms.p50,
                        c.connect_ms.p99,
                        c.cpu_s,
                        c.cpu_pct,
                        mib(c.rss_peak)
                    );
                }
            }
        }
        if self.scenario == "reconnect-storm" {
            o.push_str("| target | clients | missed each | caught up in s | lost | dup | failed resumes | server CPU s (% of a core) | peak RSS MiB |\n");
            o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for t in &self.targets {
                if let Some(s) = &t.storm {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} | {} | {} | {:.2} ({:.0} %) | {:.1} |",
                        t.target,
                        s.clients,
                        s.missed,
                        if s.complete {
                            format!("{:.2}", s.catchup_s)
                        } else {
                            format!("incomplete after {:.1}", s.catchup_s)
                        },
                        s.lost,
                        s.duplicates,
                        s.failed,
                        s.cpu_s,
                        s.cpu_pct,
                        mib(s.rss_peak)
                    );
                } else if let Some(n) = &t.note {
                    let _ = writeln!(o, "| {} | {n} | | | | | | | |", t.target);
                }
            }
        }
        for t in &self.targets {
            if let Some(e) = &t.error {
                let _ = writeln!(o, "\n**{} failed:** {e}", t.target);
            }
        }
        let _ = writeln!(
            o,
            "\nconnect-to-joined p50/p99 ms: {}",
            self.targets
                .iter()
                .map(|t| format!(
                    "{} {:.1}/{:.1}",
                    t.target, t.connect_ms.p50, t.connect_ms.p99
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        o
    }
}

/// A target's name, with its round when the run has several.
fn label(t: &TargetReport) -> String {
    if t.round == 0 {
        t.target.clone()
    } else {
        format!("{} (round {})", t.target, t.round + 1)
    }
}

/// The median of `v` (mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Now in UTC as `YYYYMMDDTHHMMSSZ` (no date crate needed for one format).
pub fn utc_stamp() -> String {
    let secs = crate::payload::now_ns() / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn utc_stamp_has_the_documented_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 16);
        assert!(s.starts_with("20"));
        assert!(s.ends_with('Z'));
    }
}
