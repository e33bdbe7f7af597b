#!/usr/bin/env bash
# Build models/tiny-chat, models/tiny-chat-b and models/tiny-embed (committed, so only needed after
# deleting them) in a build-only venv (--venv-only: just the venv, the model builder for `compile`):
# torch, transformers and the ONNX Runtime GenAI builder never enter the gateway's own venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_VENV="${BUILD_VENV:-.venv-model}"
python3 -m venv "$BUILD_VENV"
"$BUILD_VENV/bin/pip" install -q --upgrade pip
"$BUILD_VENV/bin/pip" install -q -r scripts/requirements-model.txt
[ "${1:-}" = "--venv-only" ] && exit 0  # just the builder, for `foundry-gateway compile` (make builder)
[ -f models/tiny-chat/genai_config.json ] || "$BUILD_VENV/bin/python" scripts/make_tiny_model.py --out models/tiny-chat
# a second model (other weights) for two-model scenarios: swapping when both do not fit
[ -f models/tiny-chat-b/genai_config.json ] || \
  "$BUILD_VENV/bin/python" scripts/make_tiny_model.py --out models/tiny-chat-b --seed 4321
# an embedding model: the same recipe with the final hidden states exposed (served by /v1/embeddings)
[ -f models/tiny-embed/genai_config.json ] || \
  "$BUILD_VENV/bin/python" scripts/make_tiny_model.py --out models/tiny-embed --seed 2024 --embeddings
