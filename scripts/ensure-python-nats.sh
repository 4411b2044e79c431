#!/usr/bin/env bash
# Makes a Python virtual environment with nats-py, the NATS client the queue tests use
# as a subscriber Gossamer does not contain. Sourced by test.sh; exports
# GOSSAMER_TEST_PYTHON.
PYVENV="$(pwd)/target/pyvenv"
NATS_PY="nats-py==2.16.0"
if ! "$PYVENV/bin/python" -c "import nats" >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "python3 with venv is missing: installing it with apt-get" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$PYVENV"
  mkdir -p "$(dirname "$PYVENV")"
  python3 -m venv "$PYVENV"
  "$PYVENV/bin/python" -m pip install --quiet --disable-pip-version-check "$NATS_PY"
fi
export GOSSAMER_TEST_PYTHON="$PYVENV/bin/python"
