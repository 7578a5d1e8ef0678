#!/usr/bin/env bash
# The main job: set up (packages, build, default model), then run kvscope —
# the window when there is a display and the GUI is built, else the CLI demo.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh" kvscope kvscope_gui
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -x "$root/build/kvscope-gui" ]; then
  exec "$root/build/kvscope-gui" "$@"
fi
echo "== kvscope devices" >&2
"$root/build/kvscope" devices
echo "== kvscope run (stories15M, greedy)" >&2
"$root/build/kvscope" run -p "Once upon a time" -n 120 --temp 0 "$@"
