#!/usr/bin/env bash
# Installs psql (Debian's postgresql-client), the client the PostgreSQL door is tested
# with, when it is missing. Sourced by test.sh.
if ! command -v psql >/dev/null 2>&1; then
  echo "psql is missing: installing postgresql-client with apt-get (for the PostgreSQL door's tests)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-client >/dev/null
fi
