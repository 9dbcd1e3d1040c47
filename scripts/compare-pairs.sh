#!/usr/bin/env bash
# Person-chat pairs (shape S2) against two server binaries in one invocation, rounds
# interleaved, so a noisy machine affects both alike. Each run gets a fresh server and
# data directory (fsync durability, token auth off) and reports acked sends/s,
# SENDACK and delivery percentiles, loss, and the server's CPU seconds.
#
# Usage: compare-pairs.sh <reference-server> [candidate-server] [rates...]
#   env: PAIRS (1000), SECONDS_PER_RUN (8), ROUNDS (2), BENCH (target/release/hongyan-bench),
#        REFERENCE_ENV, CANDIDATE_ENV: extra VAR=value settings for each server, e.g. the same
#        binary with CANDIDATE_ENV="HONGYAN_WEBHOOK__URL=http://127.0.0.1:9000/hook"
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ab-server.sh
. scripts/ab-server.sh
reference=${1:?usage: compare-pairs.sh <reference-server> [candidate-server] [rates...]}
candidate=${2:-target/release/hongyan}
shift $(( $# >= 2 ? 2 : 1 ))
rates=("${@:-5000 10000}")
read -r -a rates <<<"${rates[*]}"
bench=${BENCH:-target/release/hongyan-bench}
pairs=${PAIRS:-1000}
secs=${SECONDS_PER_RUN:-8}
rounds=${ROUNDS:-2}
ticks=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # <server binary> <rate> <label> [VAR=value ...]
    local before after
    # shellcheck disable=SC2086 # the extra settings are words on purpose
    ab_start "$1" ${4:-}
    before=$(cpu_ticks "$AB_PID")
    out=$("$bench" pairs --tcp 127.0.0.1:16100 --pairs "$pairs" --rate "$2" --seconds "$secs" 2>&1 || true)
    after=$(cpu_ticks "$AB_PID")
    ab_stop
    local acked ack delivery loss
    acked=$(grep -o 'acked [0-9]* in [0-9.]* s ([0-9]*/s)' <<<"$out" | grep -o '([0-9]*' | tr -d '(' || true)
    ack=$(grep 'SENDACK latency' <<<"$out" | cut -d: -f2-)
    delivery=$(grep 'delivery latency' <<<"$out" | cut -d: -f2-)
    loss=$(grep -o 'lost [0-9]*, duplicates [0-9]*' <<<"$out")
    printf '%-10s rate %6s: acked %6s/s | SENDACK%s | delivery%s | %s | server CPU %.1f s\n' \
        "$3" "$2" "${acked:-?}" "${ack:- ?}" "${delivery:- ?}" "${loss:-?}" "$(awk -v a="$after" -v b="$before" -v t="$ticks" 'BEGIN { print (a - b) / t }')"
}

for rate in "${rates[@]}"; do
    for round in $(seq "$rounds"); do
        run "$reference" "$rate" reference "${REFERENCE_ENV:-}"
        run "$candidate" "$rate" candidate "${CANDIDATE_ENV:-}"
    done
done
