#!/usr/bin/env bash
# Overload: person-chat pairs (shape S2) offered faster than the server can store them,
# against a fresh release server (fsync durability, token auth off). Prints the load
# generator's summary, the server's RSS when idle and its peak during the run (sampled
# every 0.2 s), so that "overload slows senders, memory stays bounded" can be checked.
#
# Usage: scripts/overload.sh [server-binary] [rate] [seconds]
#   defaults: target/release/hongyan, 50000, 10; BENCH (target/release/hongyan-bench), PAIRS (1000)
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-target/release/hongyan}
rate=${2:-50000}
secs=${3:-10}
bench=${BENCH:-target/release/hongyan-bench}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

HONGYAN_AUTH__TOKEN_AUTH=false HONGYAN_LOG__FILTER=error "$server" serve --data-dir "$dir/data" \
    --http-addr 127.0.0.1:18001 --manager-addr 127.0.0.1:18300 --tcp-addr 127.0.0.1:18100 --ws-addr "" &
pid=$!
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:18001/health >/dev/null && break
    sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true; }
idle=$(rss)
echo "$idle" >"$dir/peak"
(
    while kill -0 "$pid" 2>/dev/null; do
        now=$(rss)
        if [ -n "$now" ] && [ "$now" -gt "$(cat "$dir/peak")" ]; then echo "$now" >"$dir/peak"; fi
        sleep 0.2
    done
) &
sampler=$!
"$bench" pairs --tcp 127.0.0.1:18100 --pairs "${PAIRS:-1000}" --rate "$rate" --seconds "$secs" 2>&1 | grep -v '^{' || true
peak=$(cat "$dir/peak")
echo "server RSS: idle ${idle} KiB, peak ${peak} KiB, growth $(( (peak - idle) / 1024 )) MiB"
kill -TERM "$pid"
wait "$pid" || true
kill "$sampler" 2>/dev/null || true
