#!/usr/bin/env bash
# The HTTP shape (S5: /message/send, /channel/messagesync, /conversation/sync at
# open-loop rates) against two server binaries in one invocation, rounds interleaved,
# so a noisy machine affects both alike. Each run gets a fresh server and data
# directory (fsync durability, token auth off); the table at the end gives, per part
# and binary, every round's server CPU per request and p99.
#
# Usage: compare-http.sh <reference-server> [candidate-server]
#   env: SECONDS_PER_RUN (5), ROUNDS (3), RATE (5000: /message/send per second),
#        BENCH (target/release/hongyan-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ab-server.sh
. scripts/ab-server.sh
reference=${1:?usage: compare-http.sh <reference-server> [candidate-server]}
candidate=${2:-target/release/hongyan}
bench=${BENCH:-target/release/hongyan-bench}
secs=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-3}
rate=${RATE:-5000}
results=$(mktemp)

run() { # <server binary> <label>
    local parts
    parts=$(mktemp)
    ab_start "$1"
    "$bench" http --api http://127.0.0.1:16001 --rate "$rate" --seconds "$secs" --server-pid "$AB_PID" \
        --json "$parts" >/dev/null 2>&1 || true
    sed "s/^{/{\"label\":\"$2\",/" "$parts" >>"$results"
    rm -f "$parts"
    ab_stop
}

for _ in $(seq "$rounds"); do
    run "$reference" reference
    run "$candidate" candidate
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| part | binary | CPU µs per request, each round | p99 ms, each round |")
print("|---|---|---|---|")
for part in dict.fromkeys(r["part"] for r in rows):
    for label in ("reference", "candidate"):
        mine = [r for r in rows if r["part"] == part and r["label"] == label]
        cpu = ", ".join(f'{r["server_cores"] * 1e6 / r["ok_per_sec"]:.0f}' if r.get("ok_per_sec") else "?" for r in mine)
        p99 = ", ".join(f'{r["latency"]["p99_ms"]:.1f}' if "p99_ms" in r["latency"] else "?" for r in mine)
        print(f"| {part} | {label} | {cpu} | {p99} |")
EOF
rm -f "$results"
