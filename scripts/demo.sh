#!/usr/bin/env bash
# The main job: installs what is missing (QEMU 10 and the guest image tools; needs root or
# sudo), builds wukong, builds the guest image from Debian packages (cached), starts the local
# daemon and walks a VM through live changes of vCPUs, memory, disks and NICs, verified in the
# guest, with a heartbeat running; ends with a table.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_vm_packages
step "build" cargo build --locked --bin wukong
bin=$(pwd)/${CARGO_TARGET_DIR:-target}/debug/wukong
step "guest image" "$bin" image build
step "demo" "$bin" demo
echo
echo "wukong is $bin"
