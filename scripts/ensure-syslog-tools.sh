#!/usr/bin/env bash
# Installs the real syslog senders the syslog and Elasticsearch doors are tested with,
# when they are missing: util-linux's `logger` (Debian's bsdutils) and rsyslog with its
# Elasticsearch output (rsyslog-elasticsearch). Sourced by test.sh.
if ! command -v logger >/dev/null 2>&1 || [ ! -x /usr/sbin/rsyslogd ] \
  || ! ls /usr/lib/*/rsyslog/omelasticsearch.so >/dev/null 2>&1; then
  echo "logger, rsyslog or rsyslog-elasticsearch is missing: installing them with apt-get (for the syslog tests)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bsdutils rsyslog rsyslog-elasticsearch >/dev/null
fi
