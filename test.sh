#!/usr/bin/env bash
# Runs the whole test suite: installs nats-server and chromium if they are missing,
# builds the `gossamer` binary the integration tests start, and runs every test with
# cargo-nextest (or cargo test when nextest is not installed).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-nats-server.sh
source scripts/ensure-chromium.sh
source scripts/ensure-python-nats.sh
cargo build --locked --bin gossamer
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
