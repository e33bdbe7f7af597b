#!/usr/bin/env bash
# Build models/tiny-chat and models/tiny-chat-b (committed, so only needed after deleting them) in a
# build-only venv:
# torch, transformers and the ONNX Runtime GenAI builder never enter the gateway's own venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_VENV="${BUILD_VENV:-.venv-model}"
python3 -m venv "$BUILD_VENV"
"$BUILD_VENV/bin/pip" install -q --upgrade pip
"$BUILD_VENV/bin/pip" install -q -r scripts/requirements-model.txt
[ -f models/tiny-chat/genai_config.json ] || "$BUILD_VENV/bin/python" scripts/make_tiny_model.py --out models/tiny-chat
# a second model (other weights) for two-model scenarios: swapping when both do not fit
[ -f models/tiny-chat-b/genai_config.json ] || \
  "$BUILD_VENV/bin/python" scripts/make_tiny_model.py --out models/tiny-chat-b --seed 4321
