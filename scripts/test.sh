#!/usr/bin/env bash
# Installs what the tests need (if missing) and runs every check: format, lints, all tests.
# Installing packages needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_vm_packages
step "format" cargo fmt --all -- --check
step "lints" cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    step "tests (nextest)" cargo nextest run --workspace --locked --no-fail-fast
else
    echo "cargo-nextest not found: running the tests with cargo test" >&2
    step "tests" cargo test --workspace --locked --no-fail-fast
fi
