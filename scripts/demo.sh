#!/usr/bin/env bash
# The main job: builds wukong and shows the planner explaining the three examples against a
# VM with 2 vCPUs, 8Gi and a 20Gi system disk.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

step "build" cargo build --locked --bin wukong
bin=${CARGO_TARGET_DIR:-target}/debug/wukong
for f in examples/cpu-2-to-4.yaml examples/grow-system-disk.yaml examples/attach-data-disk.yaml; do
    echo
    echo "\$ wukong plan -f $f --observed examples/observed-my-vm.yaml"
    "$bin" plan -f "$f" --observed examples/observed-my-vm.yaml
done
