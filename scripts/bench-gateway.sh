#!/usr/bin/env bash
# Start the gateway as the shared harness's `--extra` target: routing, metrics, access log and auth on.
#   ../shared/bench/run.sh --extra ours='scripts/bench-gateway.sh {port} {upstream} {api_key}'
set -euo pipefail
cd "$(dirname "$0")/.."
export GATEWAY_UPSTREAM_KIND=openai GATEWAY_REGISTRY_PATH=scripts/bench-registry.json \
  GATEWAY_API_KEYS="$3" GATEWAY_ACCESS_LOG=true GATEWAY_ENV_FILE=/nonexistent \
  GATEWAY_MODEL_CONCURRENCY=256 GATEWAY_ADAPTIVE_CONCURRENCY=false GATEWAY_MAX_IN_FLIGHT=512
exec .venv/bin/foundry-gateway serve --port "$1" --upstream "$2" 2>"${BENCH_GATEWAY_LOG:-/dev/null}"
