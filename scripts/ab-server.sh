# Sourced by the compare-*.sh scripts: one server of an A/B run, on fixed loopback
# ports (API 16001, manager 16300, TCP 16100, WS 16200; no demo), with a fresh data
# directory, fsync durability and token auth off.
#
#   ab_start <server binary> [VAR=value ...]   starts it, waits for /health; sets AB_PID
#   ab_stop                                    stops it and removes its data directory

ab_start() {
    local binary=$1
    shift
    AB_DIR=$(mktemp -d)
    env HONGYAN_AUTH__TOKEN_AUTH=false HONGYAN_LOG__FILTER=warn "$@" "$binary" serve --data-dir "$AB_DIR" \
        --http-addr 127.0.0.1:16001 --manager-addr 127.0.0.1:16300 --tcp-addr 127.0.0.1:16100 \
        --ws-addr 127.0.0.1:16200 --demo-addr "" &
    AB_PID=$!
    for _ in $(seq 100); do
        curl -sf http://127.0.0.1:16001/health >/dev/null && return 0
        sleep 0.1
    done
    echo "the server did not answer /health within 10 s" >&2
}

ab_stop() {
    kill -TERM "$AB_PID"
    wait "$AB_PID" || true
    rm -rf "$AB_DIR"
}
