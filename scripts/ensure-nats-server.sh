#!/usr/bin/env bash
# Installs Debian's nats-server when it is on neither PATH nor /usr/sbin.
# Sourced by run.sh and test.sh.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "nats-server is missing: installing it with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
