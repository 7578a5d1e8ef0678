#!/usr/bin/env bash
# The GPU path under AddressSanitizer + UndefinedBehaviorSanitizer: builds
# everything into build-asan/ and runs the GPU, KV and end-to-end tests on
# lavapipe (real Vulkan, real SPIR-V; the driver runs inside the sanitized
# process). Leak checking is off here: Mesa's driver keeps allocations for the
# life of the process that LeakSanitizer would report as ours. Slow (the
# sanitizers and lavapipe together), so CI runs the host-side tests under the
# sanitizers instead; run this before touching gpu/, kv/ or models/forward.
#   scripts/sanitize-gpu.sh [ctest -R regex, default: the gpu and kv rooms and app/test_e2e]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh" kvscope >/dev/null  # packages and the default model
build="$root/build-asan"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSCOPE_SANITIZE_GPU=ON \
        -DKVSCOPE_GUI=OFF >/dev/null
fi
ninja -C "$build" kvscope test_gpu test_kv test_e2e
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$build" --output-on-failure --timeout 3000 -j "$(nproc)" -R "${1:-^(gpu|kv)/|^app/test_e2e$}"
