//! Latency summaries (HdrHistogram) and the JSON records every scenario writes.

use std::io::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

/// Latencies in microseconds, collected cheaply per task and summarised once.
#[derive(Debug, Default)]
pub(crate) struct Samples(Vec<u32>);

impl Samples {
    pub(crate) fn record(&mut self, micros: u64) {
        self.0.push(micros.min(u64::from(u32::MAX)) as u32);
    }

    pub(crate) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// p50, p99, p999 and max in milliseconds, from an HdrHistogram (3 significant
    /// digits).
    pub(crate) fn summary(&self) -> Summary {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .expect("invariant: static histogram bounds are valid");
        for &v in &self.0 {
            h.saturating_record(u64::from(v).max(1));
        }
        let ms = |q: f64| if self.0.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        Summary { count: self.0.len() as u64, p50: ms(0.5), p99: ms(0.99), p999: ms(0.999), max: ms(1.0) }
    }
}

/// A latency summary in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Summary {
    pub(crate) fn json(&self) -> Value {
        json!({"count": self.count, "p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999, "max_ms": self.max})
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return write!(f, "no samples");
        }
        write!(f, "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms", self.p50, self.p99, self.p999, self.max)
    }
}

/// Microseconds since `epoch`: senders put it in payloads, receivers subtract it.
pub(crate) fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// Appends `record` as one JSON line to `path` (when given) and prints it.
pub(crate) fn emit(path: Option<&std::path::Path>, record: &Value) -> anyhow::Result<()> {
    println!("{record}");
    if let Some(path) = path {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(file, "{record}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let mut s = Samples::default();
        for v in 1..=1000 {
            s.record(v * 1000); // 1 ms … 1000 ms
        }
        let sum = s.summary();
        assert_eq!(sum.count, 1000);
        assert!((sum.p50 - 500.0).abs() < 1.0, "{sum}");
        assert!((sum.p99 - 990.0).abs() < 2.0, "{sum}");
        assert!((sum.max - 1000.0).abs() < 2.0, "{sum}");
        assert_eq!(Samples::default().summary().to_string(), "no samples");
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_secs(pid).is_some());
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
    }
}
