//! CPU time and resident memory of the target's server processes, from `/proc`.
//!
//! CPU is `utime + stime` of `/proc/<pid>/stat` (fields 14 and 15, in clock
//! ticks), read at the start and end of a phase. Memory is `VmRSS` of
//! `/proc/<pid>/status`, sampled every 100 ms by a thread for the peak, plus a
//! final reading. Several processes (Herald's edge and its NATS server; two
//! Node servers and Redis) are summed, and also reported one by one.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `USER_HZ`: the unit of `/proc/<pid>/stat` times. The kernel fixes it at 100
/// for user space on every architecture Linux supports (it is not `CONFIG_HZ`).
const USER_HZ: f64 = 100.0;

/// One server process of a target.
#[derive(Debug, Clone, Serialize)]
pub struct Proc {
    /// What it is (`herald`, `nats-server`, `node-1`, `redis`…).
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

/// CPU seconds used so far by `pid` (user + system), or `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces:
    // count fields from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state), so field 14 is index 11.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Resident memory of `pid` in bytes, or `None` if it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of the current RSS of `procs`.
pub fn total_rss(procs: &[Proc]) -> u64 {
    procs.iter().filter_map(|p| rss_bytes(p.pid)).sum()
}

/// Per-process CPU seconds now.
pub fn cpu_snapshot(procs: &[Proc]) -> Vec<f64> {
    procs
        .iter()
        .map(|p| cpu_seconds(p.pid).unwrap_or(0.0))
        .collect()
}

/// Samples the summed RSS of a set of processes until dropped, keeping the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling every 100 ms.
    pub fn start(procs: Vec<Proc>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(total_rss(&procs)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(total_rss(&procs), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The highest summed RSS seen so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_bytes(me).unwrap_or(0) > 0);
    }
}
