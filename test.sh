#!/usr/bin/env bash
# Runs the whole test suite: installs nats-server and chromium if they are missing and
# makes a Python environment with nats-py, elasticsearch and opensearch-py (target/pyvenv),
# installs logger and rsyslog (with its Elasticsearch output) for the syslog tests, psql for the
# PostgreSQL door's, builds the `gossamer` binary
# the integration tests start (with every test), runs every test with cargo-nextest (or cargo test when
# nextest is not installed), then a short fuzz run of the decoders and the parser.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-nats-server.sh
source scripts/ensure-chromium.sh
source scripts/ensure-python-clients.sh
source scripts/ensure-syslog-tools.sh
source scripts/ensure-node-clients.sh
source scripts/ensure-postgres-client.sh
# Built with the features the tests unify to, so the test run reuses every crate: a
# plain `cargo build --bin gossamer` resolves features without the dev-dependencies and
# would build the big crates (DataFusion) a second time.
cargo build --locked --workspace --tests --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# A short coverage-guided fuzz run of the decoders and the query parser.
scripts/fuzz-smoke.sh
