#!/usr/bin/env bash
# Group fan-out (shape S3: groups of online members, one sender each) against two
# server binaries in one invocation, rounds interleaved, so a noisy machine affects both
# alike. Each run gets a fresh server and data directory (fsync durability, token auth
# off) and reports deliveries/s, end-to-end percentiles, loss, and the server's CPU per
# delivery as the bench measures it.
#
# Usage: compare-groups.sh <reference-server> [candidate-server] [rates per group...]
#   env: GROUPS_N (10), MEMBERS (1000), SECONDS_PER_RUN (8), ROUNDS (2),
#        BENCH (target/release/hongyan-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ab-server.sh
. scripts/ab-server.sh
reference=${1:?usage: compare-groups.sh <reference-server> [candidate-server] [rates...]}
candidate=${2:-target/release/hongyan}
shift $(( $# >= 2 ? 2 : 1 ))
rates=("${@:-3 6}")
read -r -a rates <<<"${rates[*]}"
bench=${BENCH:-target/release/hongyan-bench}
groups=${GROUPS_N:-10}
members=${MEMBERS:-1000}
secs=${SECONDS_PER_RUN:-8}
rounds=${ROUNDS:-2}

run() { # <server binary> <rate> <label>
    local out
    ab_start "$1"
    out=$("$bench" groups --tcp 127.0.0.1:16100 --api http://127.0.0.1:16001 --groups "$groups" \
        --members "$members" --rates "$2" --seconds "$secs" --server-pid "$AB_PID" \
        2>&1 || true)
    ab_stop
    # The JSON record: deliveries/s, latency and CPU per delivery.
    python3 -c '
import json, sys
label, rate = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    rate_out, e2e = r["deliveries_per_sec"], r["e2e"]
    p50, p99, lost, dup = e2e["p50_ms"], e2e["p99_ms"], r["lost"], r["duplicates"]
    per = (r["server_cores"] or 0) * r["elapsed_secs"] * 1e6 / max(r["deliveries"], 1)
    print(f"{label:<10} rate {rate:>3}/s per group: {rate_out:>8.0f} deliveries/s | p50 {p50:7.1f} ms "
          f"p99 {p99:7.1f} ms | lost {lost} dup {dup} | {per:5.1f} us server CPU per delivery")
' "$3" "$2" <<<"$out"
}

for rate in "${rates[@]}"; do
    for round in $(seq "$rounds"); do
        run "$reference" "$rate" reference
        run "$candidate" "$rate" candidate
    done
done
