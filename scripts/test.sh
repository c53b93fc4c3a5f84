#!/usr/bin/env bash
# Runs every test of pageless: unit tests, integration tests against real QEMU guests,
# the kernel module in a VM. Needs what scripts/setup.sh installs, and root.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --no-fail-fast "$@"
