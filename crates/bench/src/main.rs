//! `hongyan-bench`: load scenarios against a running server over the real protocol
//! (X25519 handshake, AES payloads), bounded in count and time.
//!
//! | scenario | shape | what it reports |
//! |---|---|---|
//! | `connections` | S1 | connections held, server RSS per connection |
//! | `pairs` | S2 | acked sends/s, SENDACK and delivery percentiles, loss, duplicates |
//! | `groups` | S3, S4 | deliveries/s, end-to-end percentiles, loss, duplicates per rate step |
//! | `nats-groups` | S3, S4 | the same on nats-server: the reference |
//! | `http` | S5 | `/message/send`, `/channel/messagesync` and `/conversation/sync`, open loop |
//! | `report` | | a run's JSON records as tables, Hongyan next to NATS with ratios |
//! | `compare` | | a run's records against the recorded baseline: what got worse |
//!
//! Every scenario prints a summary and a JSON record per step (appended to `--json`).
//! `scripts/bench.sh` runs the standard suite; `docs/benchmarks.md` has the results.
//!
//! ```sh
//! hongyan-bench pairs --tcp 127.0.0.1:5100 --pairs 1000 --rate 10000 --seconds 10
//! hongyan-bench groups --tcp 127.0.0.1:5100 --api http://127.0.0.1:5001 --groups 10 --members 1000 --rates 3,6
//! ```
//!
//! The server must run with `auth.token_auth = false` (or have a token `--token`
//! registered for every uid): registering thousands of users is not what this measures.

mod compare;
mod connections;
mod groups;
mod http;
mod nats;
mod pairs;
mod report;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Hongyan load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Hold N idle authenticated connections and report server RSS per connection (S1).
    Connections(connections::ConnectionsArgs),
    /// M person-chat pairs sending at a target rate: throughput, latency, loss (S2).
    Pairs(pairs::PairsArgs),
    /// G groups of S online members, one sender each, over a sweep of rates (S3, S4).
    Groups(groups::GroupsArgs),
    /// The reference: the same group shape on nats-server core pub/sub.
    NatsGroups(nats::NatsArgs),
    /// HTTP sends and history syncs (S5).
    Http(http::HttpArgs),
    /// A run's JSON records as Markdown tables with Hongyan/NATS ratios.
    Report(report::ReportArgs),
    /// A run's records against the recorded baseline (or saved into it).
    Compare(compare::CompareArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Report(args) => return report::run(args),
        Scenario::Compare(args) => return compare::run(args),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Connections(args) => connections::run(args).await,
            Scenario::Pairs(args) => pairs::run(args).await,
            Scenario::Groups(args) => groups::run(args).await,
            Scenario::NatsGroups(args) => nats::run(args).await,
            Scenario::Http(args) => http::run(args).await,
            Scenario::Report(_) | Scenario::Compare(_) => unreachable!("handled above"),
        }
    })
}
