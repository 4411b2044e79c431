#!/usr/bin/env bash
# Installs, with npm, the Node.js clients the Loki door is tested with (winston and
# winston-loki, in target/node-clients), and Node.js itself when it is missing. Sourced
# by test.sh; exports GOSSAMER_TEST_NODE_MODULES.
NODE_CLIENTS="$(pwd)/target/node-clients"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node or npm is missing: installing them with apt-get (for the Loki client tests)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if ! NODE_PATH="$NODE_CLIENTS/node_modules" node -e "require('winston'); require('winston-loki')" >/dev/null 2>&1; then
  mkdir -p "$NODE_CLIENTS"
  npm install --prefix "$NODE_CLIENTS" --no-audit --no-fund --silent winston@3.17.0 winston-loki@6.1.7 >/dev/null
fi
export GOSSAMER_TEST_NODE_MODULES="$NODE_CLIENTS/node_modules"
