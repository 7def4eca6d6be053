#!/usr/bin/env bash
# The main job on the built-in default: set up, build, create the demo model (tiny random weights,
# real DeepSeek-V4 tokenizer) and generate a completion with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
./build/dsv4 generate -p "${1:-Write a haiku about memory bandwidth.}" -n 64 --seed 1
./build/dsv4 inspect "${DSV4_DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dsv4/demo}"
