#!/usr/bin/env bash
# Install Debian's redis-server package when missing. Tests run their own instance on 127.0.0.1, so the
# package's service is kept from starting.
set -euo pipefail
if command -v redis-server >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "redis-server missing and cannot apt-get install it (need root on Debian/Ubuntu)." >&2
  if [ "${CI:-}" = true ]; then
    echo "CI=true: a missing real part fails the run." >&2
    exit 1
  fi
  echo "Tests that need it will be skipped." >&2
  exit 0
fi
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
fi
trap '[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
command -v redis-server >/dev/null
