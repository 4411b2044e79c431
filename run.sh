#!/usr/bin/env bash
# Runs Gossamer: installs nats-server if it is missing, builds, and starts a local node
# (with its own nats-server, JetStream on) and its console. Extra flags go to
# `gossamer up` (see `gossamer up --help`).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-nats-server.sh
cargo build --release --locked --bin gossamer
exec target/release/gossamer up --data "${GOSSAMER_DATA:-gossamer-data}" "$@"
