#!/usr/bin/env bash
# Server RSS per idle authenticated connection: starts a release server, holds N
# connections over TCP (then over WS, on a fresh server) from a separate process, and
# prints what the server's RSS grew by, per connection. Usage: measure-connections.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
cargo build --release --quiet -p hongyan -p hongyan-bench

for transport in tcp ws; do
    dir=$(mktemp -d)
    env HONGYAN_AUTH__TOKEN_AUTH=false HONGYAN_LOG__FILTER=warn ${SERVER_ENV:-} target/release/hongyan serve \
        --data-dir "$dir" --http-addr 127.0.0.1:15001 --manager-addr 127.0.0.1:15300 \
        --tcp-addr 127.0.0.1:15100 --ws-addr 127.0.0.1:15200 --demo-addr "" &
    pid=$!
    trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
    for _ in $(seq 50); do
        curl -sf http://127.0.0.1:15001/health >/dev/null && break
        sleep 0.1
    done
    if [ "$transport" = tcp ]; then
        target=(--tcp 127.0.0.1:15100)
    else
        target=(--ws ws://127.0.0.1:15200)
    fi
    target/release/hongyan-bench connections "${target[@]}" --count "$N" --server-pid "$pid"
    kill -TERM "$pid"
    wait "$pid"
    rm -rf "$dir"
    trap - EXIT
done
