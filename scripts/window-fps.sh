#!/usr/bin/env bash
# The window's frame rate while generating at a given context length: builds
# a conversation of N tokens (tests/data/corpus.txt, repeated) with the
# default model's tokenizer, loads it into two sessions with rolling
# StreamingLLM side by side, sends " Then" and reports the frames per second
# while both write. Needs a display or xvfb-run.
#   scripts/window-fps.sh [TOKENS...]      default: 2048 8192 32768
#   FPS_MODEL=m.gguf scripts/window-fps.sh 2048   another model (its tokenizer must be the default model's:
#                                                 kvscope synthetic ... --vocab-from)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(2048 8192 32768)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
corpus=$(cat "$root/tests/data/corpus.txt")
"$build/kvscope" tokenize --json "$corpus" > "$work/corpus.json"
for n in "${sizes[@]}"; do
  python3 - "$work/corpus.json" "$n" "$work/conv-$n.json" <<'PY'
import json, sys
ids = json.load(open(sys.argv[1]))["ids"]
n = int(sys.argv[2])
body = [i for i in ids if i != 1]
tokens = [1]
while len(tokens) < n:
    tokens += body[: n - len(tokens)]
json.dump({"kvscope_conversation": 1, "model": "", "cache": "", "template": "none", "pins": [],
           "tokens": tokens,
           "turns": [{"role": "user", "text": "(the corpus, repeated)", "first_token": 0, "n_tokens": len(tokens)}]},
          open(sys.argv[3], "w"))
PY
  run=(xvfb-run -a -s '-screen 0 1920x1200x24')
  [ -n "${DISPLAY:-}" ] && run=()
  model_args=()
  [ -n "${FPS_MODEL:-}" ] && model_args=(-m "$FPS_MODEL")
  XDG_CONFIG_HOME="$work/config" "${run[@]}" "$build/kvscope-gui" "${model_args[@]}" --load-every "$work/conv-$n.json" \
    --prompt " Then" --tokens "${FPS_TOKENS:-120}" --temp 0 \
    --compare "f16 + streamingllm:sinks=4,window=124,rolling;q8 + streamingllm:sinks=4,window=124,rolling" \
    --screenshot "$work/shot-$n.png" > "$work/out-$n.txt" 2>&1
  python3 - "$n" "$work/out-$n.txt" <<'PY'
import json, sys
out = open(sys.argv[2]).read()
j = json.loads(out[out.rfind('\n{') + 1:])
print(f"context {sys.argv[1]:>6} tokens: {j['fps_generating']:.1f} fps while generating, "
      f"{j['ms_per_frame_widgets']:.2f} ms widgets + {j['ms_per_frame_render']:.2f} ms render per frame, "
      f"tok/s {[round(t, 1) for t in j['tok_s']]}, errors {j['errors']}")
PY
  [ -n "${KEEP_SHOTS:-}" ] && cp "$work/shot-$n.png" "${KEEP_SHOTS}/window-$n.png"
done
