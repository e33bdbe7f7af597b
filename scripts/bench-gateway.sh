#!/usr/bin/env bash
# Start the gateway as an extra target of the team's shared benchmark harness (outside this repository):
# routing, metrics, access log and auth on. The harness runs: scripts/bench-gateway.sh {port} {upstream} {api_key}
set -euo pipefail
cd "$(dirname "$0")/.."
export GATEWAY_UPSTREAM_KIND=openai GATEWAY_REGISTRY_PATH=scripts/bench-registry.json \
  GATEWAY_API_KEYS="$3" GATEWAY_ACCESS_LOG=true GATEWAY_ENV_FILE=/nonexistent \
  GATEWAY_MODEL_CONCURRENCY=256 GATEWAY_ADAPTIVE_CONCURRENCY=false GATEWAY_MAX_IN_FLIGHT=512
exec .venv/bin/foundry-gateway serve --port "$1" --upstream "$2" 2>"${BENCH_GATEWAY_LOG:-/dev/null}"
