#!/usr/bin/env bash
# Every test: set up (packages, build everything, default model), run the
# doctest suites through ctest on whatever Vulkan device exists (lavapipe on a
# machine without a GPU), then the host-side code (GGUF, tokenizer, converter,
# quantization) again under AddressSanitizer + UndefinedBehaviorSanitizer,
# then each libFuzzer target (tests/fuzz) for a minute.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh" all

echo "== tests (build/)" >&2
# One ctest entry per test file (labels: the room, fast/slow), as many at once
# as there are cores; each prints its cases' durations.
ctest --test-dir "$root/build" --output-on-failure --timeout 1500 -j "$(nproc)"

san="$root/build-sanitize"
if [ ! -f "$san/build.ninja" ]; then
  cmake -S "$root" -B "$san" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVSCOPE_SANITIZE=ON >/dev/null
fi
echo "== host tests under ASan + UBSan (build-sanitize/)" >&2
ninja -C "$san"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$san" --output-on-failure --timeout 1500

echo "== fuzzing: each target for a minute from its seed corpus (build-fuzz/)" >&2
"$root/scripts/fuzz.sh" 60
