#!/usr/bin/env bash
# Fuzzing: builds the libFuzzer targets (tests/fuzz, clang + ASan + UBSan,
# host-side code only) into build-fuzz/ and runs each for a while from its
# seed corpus (tests/fuzz/corpus/TARGET, never written to: new inputs go to
# build-fuzz/corpus/TARGET). A finding (crash, sanitizer report, timeout,
# leak) fails the run and leaves its input as build-fuzz/findings/TARGET/*;
# fix it, and keep the input in tests/fuzz/regressions/TARGET/ (a test reads
# those files, and the fuzzer starts from them too).
#   scripts/fuzz.sh [SECONDS per target, default 60] [TARGET...]
#   scripts/fuzz.sh --runs N [TARGET...]   N executions per target instead
#   scripts/fuzz.sh --seeds        rewrite the committed seed corpora
# Tokenizer inputs are capped at 4 KiB (longer text exercises nothing new
# and runs ten times slower); the file formats at 64 KiB.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-fuzz"
say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }

for p in clang libclang-rt-14-dev; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing clang and its fuzzer runtime"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev >/dev/null
    break
  fi
done
if [ ! -f "$build/build.ninja" ]; then
  CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSCOPE_FUZZ=ON >/dev/null
fi
targets=(gguf tokenizer_spm tokenizer_bpe chat_template conversation settings trace scenario)
ninja -C "$build" $(printf 'fuzz_%s ' "${targets[@]}") fuzz_seeds >&2

if [ "${1:-}" = "--seeds" ]; then
  rm -rf "$root/tests/fuzz/corpus"
  "$build/fuzz_seeds" "$root/tests/fuzz/corpus"
  say "seeds written to tests/fuzz/corpus"
  exit 0
fi
limit="-max_total_time=60"; what="60 s"
if [ "${1:-}" = "--runs" ]; then
  limit="-runs=$2"; what="a run of $2"; shift 2
elif [ $# -gt 0 ]; then
  limit="-max_total_time=$1"; what="$1 s"; shift
fi
[ $# -eq 0 ] || targets=("$@")

status=0
run_one() {
  local t=$1 work="$build/corpus/$1" findings="$build/findings/$1"
  mkdir -p "$work" "$findings"
  local log="$build/fuzz-$t.log"
  local regressions=()
  [ -d "$root/tests/fuzz/regressions/$t" ] && regressions=("$root/tests/fuzz/regressions/$t")
  local max_len=65536
  case $t in tokenizer_*) max_len=4096 ;; esac
  if "$build/fuzz_$t" "$work" "$root/tests/fuzz/corpus/$t" "${regressions[@]}" "$limit" -timeout=10 -rss_limit_mb=2048 \
      -max_len=$max_len -artifact_prefix="$findings/" -print_final_stats=1 >"$log" 2>&1; then
    local runs
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    local secs
    secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "?")
    say "fuzz_$t: ${runs} executions in ${secs} s (${what}), no finding"
  else
    say "fuzz_$t: FINDING — see $log and $findings/"
    tail -n 40 "$log" >&2
    return 1
  fi
}
# As many targets at once as there are cores.
jobs=$(nproc)
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
