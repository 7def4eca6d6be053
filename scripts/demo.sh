#!/usr/bin/env bash
# The main job on the built-in default: set up, build, and start `dsv4 serve` (OpenAI + Anthropic
# compatible API on http://127.0.0.1:8000) on the demo model (tiny random weights, real DeepSeek-V4
# tokenizer; created on first use). It prints an example curl. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./build/dsv4 serve "$@"
