#!/usr/bin/env bash
# Runs Gossamer: installs nats-server if it is missing, builds, and starts a local node
# (with its own nats-server, JetStream on) and its console. Extra flags go to
# `gossamer up` (see `gossamer up --help`); data lives in ./gossamer-data unless
# --data (or GOSSAMER_DATA) says otherwise.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-nats-server.sh
cargo build --release --locked --bin gossamer
args=("$@")
case " $* " in
  *" --data "* | *" --data="*) ;;
  *) args=(--data "${GOSSAMER_DATA:-gossamer-data}" "${args[@]}") ;;
esac
exec target/release/gossamer up "${args[@]}"
