//! `compare`: a run's records against those recorded in the repository
//! (`docs/bench-baseline.jsonl`). A step is matched by what it ran (scenario, shape,
//! system, storage, part, sizes and rate), so a `--quick` run is held against the
//! quick steps and the full suite against the full one; a step with no recorded
//! match is left out. Flagged: throughput down, or CPU per operation, p99 or memory
//! per connection up, by more than the tolerance. `--save` writes the run's records
//! into the baseline, replacing the steps they match.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::Value;

use crate::report::{cpu_per_op, ops_per_sec};

#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// The recorded records (JSON lines).
    baseline: std::path::PathBuf,
    /// This run's records (JSON lines).
    results: std::path::PathBuf,
    /// How much worse, in percent, a figure may be before it is flagged.
    #[arg(long, default_value_t = 20.0)]
    tolerance_pct: f64,
    /// Write this run's steps into the baseline instead of comparing.
    #[arg(long)]
    save: bool,
}

/// What identifies a step across runs.
const KEY_FIELDS: [&str; 14] = [
    "scenario",
    "shape",
    "system",
    "storage",
    "part",
    "transport",
    "held",
    "pairs",
    "groups",
    "members",
    "target_rate",
    "rate_per_group",
    "conversations",
    "workers",
];

fn key(r: &Value) -> String {
    KEY_FIELDS
        .iter()
        .filter_map(|f| r.get(*f).filter(|v| !v.is_null()).map(|v| format!("{f}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("a record in {}", path.display())))
        .collect()
}

/// The latency a step is judged by: end to end for group steps (whose records also
/// carry the sender's SENDACK), SENDACK for pairs, the answer for HTTP.
fn p99_ms(r: &Value) -> Option<f64> {
    ["e2e", "sendack", "latency"].iter().find_map(|k| r.get(*k)?.get("p99_ms")?.as_f64())
}

/// The figures of `now` worse than `then`'s by more than `tolerance` (a fraction).
pub(crate) fn regressions(then: &Value, now: &Value, tolerance: f64) -> Vec<String> {
    let mut found = Vec::new();
    let mut lower_is_worse = |name: &str, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b)
            && a > 0.0
            && b < a * (1.0 - tolerance)
        {
            found.push(format!("{name} {a:.1} → {b:.1} ({:+.0} %)", (b / a - 1.0) * 100.0));
        }
    };
    lower_is_worse("per second", ops_per_sec(then), ops_per_sec(now));
    let mut higher_is_worse = |name: &str, a: Option<f64>, b: Option<f64>, floor: f64| {
        // `floor`: a rise smaller than this is noise whatever its share.
        if let (Some(a), Some(b)) = (a, b)
            && b > a * (1.0 + tolerance)
            && b - a > floor
        {
            found.push(format!("{name} {a:.1} → {b:.1} ({:+.0} %)", (b / a.max(f64::MIN_POSITIVE) - 1.0) * 100.0));
        }
    };
    higher_is_worse("CPU µs per operation", cpu_per_op(then), cpu_per_op(now), 0.5);
    higher_is_worse("p99 ms", p99_ms(then), p99_ms(now), 5.0);
    let rss = |r: &Value| r.get("rss_bytes_per_conn").and_then(Value::as_f64);
    higher_is_worse("RSS bytes per connection", rss(then), rss(now), 100.0);
    found
}

pub(crate) fn run(args: CompareArgs) -> anyhow::Result<()> {
    let (baseline, results) = (read(&args.baseline)?, read(&args.results)?);
    if args.save {
        let mut steps: BTreeMap<String, Value> = baseline.into_iter().map(|r| (key(&r), r)).collect();
        let saved = results.len();
        steps.extend(results.into_iter().map(|r| (key(&r), r)));
        let text: String = steps.values().map(|r| format!("{r}\n")).collect();
        std::fs::write(&args.baseline, text).with_context(|| format!("writing {}", args.baseline.display()))?;
        println!("{saved} steps saved to {}", args.baseline.display());
        return Ok(());
    }
    let recorded: BTreeMap<String, &Value> = baseline.iter().map(|r| (key(r), r)).collect();
    let (mut matched, mut flagged) = (0, 0);
    for now in &results {
        let Some(then) = recorded.get(&key(now)) else { continue };
        matched += 1;
        let worse = regressions(then, now, args.tolerance_pct / 100.0);
        if !worse.is_empty() {
            flagged += 1;
            println!("REGRESSION? {}: {}", key(now), worse.join("; "));
        }
    }
    println!(
        "compared {matched} of {} steps with {}: {flagged} worse by more than {} %",
        results.len(),
        args.baseline.display(),
        args.tolerance_pct
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_drop_past_the_tolerance_is_flagged_and_noise_is_not() {
        let step = |acked: f64, cores: f64, p99: f64| {
            json!({"scenario": "pairs", "pairs": 1000, "target_rate": 10000, "acked_per_sec": acked,
                "server_cores": cores, "sendack": {"p99_ms": p99}})
        };
        let then = step(10_000.0, 1.0, 4.0);
        assert!(regressions(&then, &step(9_000.0, 1.05, 8.0), 0.2).is_empty(), "within 20 %, p99 rise under 5 ms");
        let worse = regressions(&then, &step(7_000.0, 1.0, 4.0), 0.2);
        assert_eq!(worse.len(), 2, "fewer per second, so more CPU per send: {worse:?}");
        assert!(worse[0].starts_with("per second 10000.0 → 7000.0"), "{worse:?}");
        let slow = regressions(&then, &step(10_000.0, 1.0, 30.0), 0.2);
        assert_eq!(slow, ["p99 ms 4.0 → 30.0 (+650 %)"]);
        assert_eq!(key(&then), "scenario=\"pairs\" pairs=1000 target_rate=10000");
    }
}
