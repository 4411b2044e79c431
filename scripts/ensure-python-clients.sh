#!/usr/bin/env bash
# Makes a Python virtual environment with the real clients of other protocols the tests
# drive Gossamer with: nats-py (a queue subscriber, shippers' NATS payloads),
# elasticsearch and opensearch-py (the Elasticsearch door's bulk helpers),
# python-logging-loki (the Loki door's push), loki-reader-core (its queries), websockets
# (its live tail), psycopg (the PostgreSQL door). Sourced by test.sh; exports
# GOSSAMER_TEST_PYTHON.
PYVENV="$(pwd)/target/pyvenv"
PACKAGES=("nats-py==2.16.0" "psycopg[binary]==3.3.9" "elasticsearch==8.19.3" "opensearch-py==3.2.0" "python-logging-loki==0.3.1" "loki-reader-core==0.2.5" "websockets==17.4")
if ! "$PYVENV/bin/python" -c "import nats, elasticsearch, opensearchpy, logging_loki, loki_reader_core, websockets, psycopg" >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "python3 with venv is missing: installing it with apt-get" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  if [ ! -x "$PYVENV/bin/python" ]; then
    mkdir -p "$(dirname "$PYVENV")"
    python3 -m venv "$PYVENV"
  fi
  "$PYVENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi
export GOSSAMER_TEST_PYTHON="$PYVENV/bin/python"
