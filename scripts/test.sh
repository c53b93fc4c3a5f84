#!/usr/bin/env bash
# Runs every test of pageless: unit tests, integration tests against real QEMU guests,
# the kernel module in a VM. Needs what scripts/setup.sh installs, and root.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every environment test is mandatory here: one whose requirement (root, QEMU, the test kernel,
# libvirt…) is missing fails instead of being skipped as under plain `cargo test`.
export PAGELESS_TEST_ENV=require
exec cargo test --workspace --no-fail-fast "$@"
