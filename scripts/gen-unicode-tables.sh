#!/usr/bin/env bash
# Regenerates src/text/unicode_tables.cpp from the installed ICU (libicu-dev). Only needed when moving
# to a different Unicode version; the generated file is committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
c++ -std=c++20 -O2 -o "$tmp/gen" "$root/tools/unicode/gen_unicode_tables.cpp" $(pkg-config --cflags --libs icu-uc)
"$tmp/gen" > "$root/src/text/unicode_tables.cpp"
echo "wrote $root/src/text/unicode_tables.cpp"
