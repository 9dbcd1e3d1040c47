//! `report`: the JSON records of a run as Markdown tables, each Hongyan figure of the
//! group shapes next to the NATS figure of the same step and their ratio.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// The JSON-lines file the scenarios appended to.
    file: std::path::PathBuf,
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, key| v.get(key)).and_then(Value::as_f64)
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

pub(crate) fn run(args: ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let records: Vec<Value> =
        text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
    print!("{}", render(&records));
    Ok(())
}

/// One step's Hongyan and NATS records.
type Pair<'a> = (Option<&'a Value>, Option<&'a Value>);

/// Which store the server ran on (records without the field are from the embedded one).
fn storage(r: &Value) -> &str {
    r["storage"].as_str().unwrap_or("fjall")
}

/// What a step did per second: acked sends, deliveries or answered requests.
pub(crate) fn ops_per_sec(r: &Value) -> Option<f64> {
    ["acked_per_sec", "deliveries_per_sec", "ok_per_sec"].iter().find_map(|k| num(r, &[k]))
}

/// The server's CPU time per operation of a step, in microseconds.
pub(crate) fn cpu_per_op(r: &Value) -> Option<f64> {
    let (cores, ops) = (num(r, &["server_cores"])?, ops_per_sec(r)?);
    (ops > 0.0).then(|| cores * 1e6 / ops)
}

pub(crate) fn render(records: &[Value]) -> String {
    let mut out = String::new();
    let of = |scenario: &'static str| records.iter().filter(move |r| r["scenario"] == scenario);
    let pairs: Vec<&Value> = of("pairs").collect();
    if !pairs.is_empty() {
        out.push_str(
            "| S2 pairs | storage | target/s | acked/s | SENDACK p50 | p99 | p999 | delivery p99 | lost | dup | server cores | CPU µs per send |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in pairs {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} | {} | {} | {} |\n",
                r["pairs"],
                storage(r),
                r["target_rate"],
                cell(num(r, &["acked_per_sec"]), 0),
                cell(num(r, &["sendack", "p50_ms"]), 2),
                cell(num(r, &["sendack", "p99_ms"]), 2),
                cell(num(r, &["sendack", "p999_ms"]), 2),
                cell(num(r, &["delivery", "p99_ms"]), 2),
                r["lost"],
                r["duplicates"],
                cell(num(r, &["server_cores"]), 2),
                cell(cpu_per_op(r), 1),
            ));
        }
        out.push('\n');
    }
    // Group steps keyed by (shape, rate): Hongyan and NATS side by side.
    let mut steps: BTreeMap<(String, u64), Pair<'_>> = BTreeMap::new();
    for r in of("groups") {
        let key = (
            r["shape"].as_str().unwrap_or("?").to_owned(),
            (num(r, &["rate_per_group"]).unwrap_or(0.0) * 1000.0) as u64,
        );
        let slot = steps.entry(key).or_default();
        if r["system"] == "nats" { slot.1 = Some(r) } else { slot.0 = Some(r) }
    }
    if !steps.is_empty() {
        out.push_str("| shape | msgs/s per group | Hongyan deliveries/s | NATS deliveries/s | ratio | Hongyan p50 / p99 | NATS p50 / p99 | Hongyan lost / dup | Hongyan cores | NATS cores | CPU µs per delivery, Hongyan / NATS |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for ((shape, rate), (h, n)) in &steps {
            let get = |r: &Option<&Value>, path: &[&str]| r.and_then(|r| num(r, path));
            let lat = |r: &Option<&Value>| {
                format!("{} / {} ms", cell(get(r, &["e2e", "p50_ms"]), 1), cell(get(r, &["e2e", "p99_ms"]), 1))
            };
            out.push_str(&format!(
                "| {shape} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
                *rate as f64 / 1000.0,
                cell(get(h, &["deliveries_per_sec"]), 0),
                cell(get(n, &["deliveries_per_sec"]), 0),
                ratio(get(h, &["deliveries_per_sec"]), get(n, &["deliveries_per_sec"])),
                lat(h),
                lat(n),
                h.map_or_else(|| "–".into(), |h| format!("{} / {}", h["lost"], h["duplicates"])),
                cell(get(h, &["server_cores"]), 2),
                cell(get(n, &["server_cores"]), 2),
                cell(h.and_then(cpu_per_op), 1),
                cell(n.and_then(cpu_per_op), 1),
            ));
        }
        // Latency-bounded throughput: the most deliveries/s of a step with p99 ≤ 50 ms.
        for system in ["hongyan", "nats"] {
            let best = steps
                .values()
                .filter_map(|(h, n)| if system == "nats" { *n } else { *h })
                .filter(|r| r["shape"] == "S3" && num(r, &["e2e", "p99_ms"]).is_some_and(|p| p <= 50.0))
                .filter_map(|r| num(r, &["deliveries_per_sec"]))
                .fold(None, |best: Option<f64>, d| Some(best.map_or(d, |b| b.max(d))));
            out.push_str(&format!(
                "\nS3 latency-bounded throughput (p99 ≤ 50 ms), {system}: {} deliveries/s",
                cell(best, 0)
            ));
        }
        out.push_str("\n\n");
    }
    let http: Vec<&Value> = of("http").collect();
    if !http.is_empty() {
        out.push_str(
            "| S5 HTTP | storage | load | ok/s | p50 | p99 | p999 | failed | server cores | CPU µs per request |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in http {
            let load = match (num(r, &["target_rate"]), num(r, &["workers"])) {
                (Some(rate), _) => format!("{rate}/s open loop"),
                (None, Some(workers)) => format!("{workers} workers, closed loop"),
                _ => "–".into(),
            };
            out.push_str(&format!(
                "| {} | {} | {load} | {} | {} ms | {} ms | {} ms | {} | {} | {} |\n",
                r["part"].as_str().unwrap_or("?"),
                storage(r),
                cell(num(r, &["ok_per_sec"]), 0),
                cell(num(r, &["latency", "p50_ms"]), 2),
                cell(num(r, &["latency", "p99_ms"]), 2),
                cell(num(r, &["latency", "p999_ms"]), 2),
                r["failed"],
                cell(num(r, &["server_cores"]), 2),
                cell(cpu_per_op(r), 1),
            ));
        }
        out.push('\n');
    }
    let connections: Vec<&Value> = of("connections").collect();
    if !connections.is_empty() {
        out.push_str("| S1 connections | held | failed | RSS bytes per connection |\n|---|---|---|---|\n");
        for r in connections {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r["transport"].as_str().unwrap_or("?"),
                r["held"],
                r["failed"],
                cell(num(r, &["rss_bytes_per_conn"]), 0)
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn group_steps_are_paired_with_their_reference_and_ratioed() {
        let step = |system: &str, rate: f64, per_sec: f64, p99: f64| {
            json!({"scenario": "groups", "shape": "S3", "system": system, "rate_per_group": rate,
                "deliveries_per_sec": per_sec, "e2e": {"p50_ms": 1.0, "p99_ms": p99}, "lost": 0, "duplicates": 0,
                "server_cores": if system == "hongyan" { Some(0.5) } else { None }})
        };
        let text = render(&[
            step("hongyan", 3.0, 30_000.0, 10.0),
            step("nats", 3.0, 20_000.0, 40.0),
            step("hongyan", 10.0, 90_000.0, 80.0),
        ]);
        assert!(text.contains("| S3 | 3 | 30000 | 20000 | 1.50× |"), "{text}");
        assert!(text.contains("| 0.50 | – | 16.7 / – |"), "CPU per delivery: {text}");
        assert!(text.contains("| S3 | 10 | 90000 | – | – |"), "{text}");
        assert!(text.contains("hongyan: 30000 deliveries/s"), "{text}");
        assert!(text.contains("nats: 20000 deliveries/s"), "{text}");
    }
}
