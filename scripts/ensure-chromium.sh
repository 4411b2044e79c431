#!/usr/bin/env bash
# Installs Debian's chromium (for the console's browser test) when it is missing.
# Sourced by test.sh.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  echo "chromium is missing: installing it with apt-get (for the browser test)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
