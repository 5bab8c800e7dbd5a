#!/usr/bin/env bash
# Installs what the tests need (if missing) and runs every check: format, lints, all tests.
# Installing packages needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_vm_packages
ensure_stock_guest_packages
step "format" cargo fmt --all -- --check
step "lints" cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The stock Debian guest for its real-VM suite (built once, cached; debootstrap needs root).
step "stock guest image" as_root bash scripts/build-stock-guest.sh "${CARGO_TARGET_DIR:-target}/tmp/stock-guest"
# The test build of `wukong` has failpoints (the fault suite, tests/local_faults.rs); a
# release build never does.
if cargo nextest --version >/dev/null 2>&1; then
    step "tests (nextest)" cargo nextest run --workspace --locked --no-fail-fast --features wukong/failpoints
else
    echo "cargo-nextest not found: running the tests with cargo test" >&2
    step "tests" cargo test --workspace --locked --no-fail-fast --features wukong/failpoints
fi
# With a real control plane at hand (KUBEBUILDER_ASSETS: kube-apiserver and etcd, and
# kube-controller-manager if there is one), the install is also checked by it and the
# operator's suite runs on it (one control plane per test, one test at a time).
if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    step "real kube-apiserver: install" cargo nextest run -p wukong-operator --locked --run-ignored only -E 'binary(real_apiserver)'
    step "real kube-apiserver: operator suite" env WUKONG_TEST_TARGET=envtest cargo nextest run -p wukong-operator --locked --no-fail-fast -j 1 -E 'binary(operator) | binary(operator_sim) | binary(operator_faults)'
else
    echo "KUBEBUILDER_ASSETS is not set: the install test and the operator suite against a real kube-apiserver did not run" >&2
fi
