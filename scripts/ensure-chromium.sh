#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver (for the console's browser tests) when
# they are missing. Sourced by test.sh.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null 2>&1; then
  echo "chromium or chromedriver is missing: installing them with apt-get (for the browser tests)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
