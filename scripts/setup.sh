#!/usr/bin/env bash
# Installs what the local backend needs on Debian 12 (root or sudo): QEMU 10 from
# bookworm-backports, and the tools that build the guest images (the default one and the
# stock Debian test guest).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_vm_packages
ensure_stock_guest_packages
