#!/usr/bin/env bash
# Sets up and runs every test: the Release suite (unit + golden), the ASan+UBSan suite, the golden
# runners as commands, and 60 s of each libFuzzer target. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
export DSV4_CMAKE_ARGS="-DDSV4_WERROR=ON"
bash scripts/setup.sh
shared="$(cd .. && pwd)/shared"

echo "== sanitizers: ASan + UBSan unit tests (golden model runs are in the Release suite)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV4_SANITIZE=ON -DDSV4_WERROR=ON -DDSV4_BUILD_BENCH=OFF
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" -E '^GoldenModel\.'

echo "== fuzz: libFuzzer, 60 s per target"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV4_BUILD_FUZZ=ON \
  -DDSV4_BUILD_TESTS=OFF -DDSV4_BUILD_BENCH=OFF
cmake --build build-fuzz -j"$jobs" --target fuzz_tokenizer fuzz_output_parser
for f in fuzz_tokenizer fuzz_output_parser; do
  corpus="build-fuzz/corpus-$f"; mkdir -p "$corpus"
  dict=""; [ -f "fuzz/$f.dict" ] && dict="-dict=fuzz/$f.dict"
  "build-fuzz/fuzz/$f" -max_total_time=60 -print_final_stats=1 $dict "$corpus" 2>&1 | tail -n 4
done

echo "== golden runners as commands"
./build/dsv4 check-golden tokenizer --tokenizer "$shared/golden/tokenizer/tokenizer.json" \
  "$shared/golden/tokenizer/cases.jsonl" "$shared/golden/tokenizer/decode_cases.jsonl" | tail -n 1
./build/dsv4 check-golden encoding --tokenizer "$shared/golden/tokenizer/tokenizer.json" \
  "$shared/golden/encoding/official" "$shared/golden/encoding/generated/cases.jsonl" \
  "$shared/golden/encoding/generated/errors.jsonl" | tail -n 1
./build/dsv4 check-golden parse "$shared/golden/encoding/parse/valid.json" "$shared/golden/encoding/parse/malformed.json" | tail -n 1

echo "== demo model smoke run"
DSV4_DEMO_DIR="$PWD/build/demo-model" ./build/dsv4 generate -p "Hello" -n 8 --seed 1 >/dev/null
DSV4_DEMO_DIR="$PWD/build/demo-model" ./build/dsv4 bench --frontiers 64,160 --decode 2 --profile \
  --csv build/bench-smoke.csv >/dev/null
# Every frontier row has all columns, and the profiled product stages a positive rate.
awk -F, 'NR == 1 { n = NF; next } NF != n || $16 <= 0 { bad = 1 } END { exit bad || NR != 3 }' build/bench-smoke.csv ||
  { echo "bench CSV malformed:"; cat build/bench-smoke.csv; exit 1; }

echo "== Release suite (unit + golden conformance)"
ctest --test-dir build --output-on-failure -j"$jobs"
