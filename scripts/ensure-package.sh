#!/usr/bin/env bash
# ensure-package.sh PACKAGE COMMAND...: install Debian's PACKAGE when any COMMAND is missing (prometheus,
# redis-server, chromium: real parts the tests start themselves on 127.0.0.1, so no package service is started).
# Under CI=true a part that cannot be installed fails the run; elsewhere the tests needing it are skipped.
set -euo pipefail
package="$1"
shift
missing=""
for command in "$@"; do
  command -v "$command" >/dev/null || missing="$missing $command"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "$package missing ($missing) and cannot apt-get install it (need root on Debian/Ubuntu)." >&2
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
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
for command in "$@"; do
  command -v "$command" >/dev/null
done
