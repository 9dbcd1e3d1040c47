#!/usr/bin/env bash
# The whole test suite: the README's test command, and what CI runs.
# Installs what the tests need that a fresh machine lacks, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
fi

# Unit, property, golden-vector and integration tests of every crate.
cargo nextest run --workspace --all-targets --no-fail-fast
# Examples in the documentation (nextest does not run doctests).
cargo test --workspace --doc --quiet
