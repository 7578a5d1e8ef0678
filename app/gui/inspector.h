// The cache inspector's panels, one function each: per-layer occupancy, the
// token strip of the conversation, the attention heatmap; and the token flow
// they share with the side-by-side columns. They read a SessionSnapshot only.
#pragma once
#include <imgui.h>

#include <functional>
#include <string>
#include <vector>

#include "app/core/worker.h"
#include "app/gui/theme.h"

namespace kvscope::gui {

// "1.2 MiB", "864 KiB", "512 B".
std::string format_bytes(double bytes);

// The grid of live slots per layer (rows) and kv head (columns); returns
// where it went and what it showed (the window's report, for tests).
struct OccupancyDrawn {
  ImVec4 rect{};  // x, y, w, h of the grid
  size_t layers = 0, heads = 0, own_budget_layers = 0;
  size_t local_layers = 0;  // sliding-window layers, drawn in their own colour
};
OccupancyDrawn draw_occupancy(const SessionSnapshot& s);
// "layer 3", or "layer 3 · local" for a sliding-window layer: the layer pickers' labels.
std::string layer_name(const SessionSnapshot& s, int layer);
// The picker's tooltip: what the layer is ("which layer ..." + its window, if any).
void layer_picker_tooltip(const SessionSnapshot& s, int layer, const char* what);

// How one token of a flow is drawn.
struct TokenStyle {
  ImVec4 colour = colour::text;
  ImU32 background = 0;  // 0: none
  bool struck = false;
  bool underline = false;  // pinned
};
// Lays out token pieces left to right, wrapping at the available width, and
// reserves the space. `style(i)` styles token i; `tooltip(i)` runs inside a
// tooltip when token i is hovered. Returns the hovered index or -1.
int draw_token_flow(const std::vector<std::string>& pieces, size_t begin, size_t end, ImFont* font,
                    const std::function<TokenStyle(size_t)>& style,
                    const std::function<void(size_t)>& tooltip);

// A drag across the token strip selects a span to pin.
struct StripDrag {
  int anchor = -1, current = -1;  // token indices; -1: no drag
};

// The whole context, each token shaded by how many layers hold it, evicted
// ones dimmed and struck through, pinned ones underlined in the pinned
// colour, `regretted` positions (lost attention) on a warm background. Hover
// tells, per layer, kept / evicted at which step with which score /
// recalled, from the eviction log up to `at_step` (-1: all of it). A drag
// selects a span; on release `on_pin` gets it (null: no pinning).
void draw_token_strip(const SessionSnapshot& s, const Fonts& fonts, StripDrag& drag,
                      const std::vector<int32_t>& regretted, int at_step,
                      const std::function<void(kv::PinnedSpan)>& on_pin);

struct HeatmapView {
  int layer = 0;
  int head = -1;        // -1: mean over heads, -2: every head, one small map each
  float gamma = 0.4f;   // colour = p^gamma, so small probabilities show
  float zoom = 1;       // >= 1: the visible share of positions is 1/zoom
  float first = 0;      // first visible position when zoomed
  bool follow = false;  // zoomed in on the newest positions: keep them in view as the context grows
  // Columns: every position (binned, the largest kept, when there are more
  // than pixels), or only the positions the cache holds at the newest row —
  // at 32K tokens with a 256-slot cache, the 256 that matter.
  bool held_only = false;
  bool held_auto = true;  // held_only follows the context's length until the person toggles it
  ImVec4 last_rect{};   // x, y, w, h of the map on screen (for tests)
  bool drew_cells = false;
  // The map's rectangles, made again only when a row arrives or the view
  // changes: a frame draws them, whatever the context length.
  struct Run {
    float x0, x1, y0, y1;
    int level;  // -1: evicted (hatched)
  };
  struct Cache {
    const void* newest = nullptr;
    size_t n_rows = 0;
    int layer = -1, head = -2;
    float gamma = 0, zoom = 0, first = -1, width = 0, height = 0;
    bool held_only = false, follow = false;
    std::vector<Run> runs;
    std::vector<uint32_t> columns;  // position of each column (held_only), else empty
    uint32_t first_col = 0, visible = 0, per_cell = 1, n_cells = 0, n_pos = 0;
  } cache;
  std::vector<Cache> head_caches;  // every head: one per head
};
void draw_heatmap(const SessionSnapshot& s, HeatmapView& view, const Fonts& fonts);
// The heatmap as drawn (same rows, positions, zoom and colours), w x h RGBA
// pixels, top row first. Empty when there are no rows.
std::vector<uint8_t> heatmap_pixels(const SessionSnapshot& s, const HeatmapView& view, int width, int height);

// ------------------------------------------------------- eviction timeline
// The eviction map: for one layer and kv head, which token positions (down)
// were held at which step (across) — a window policy draws a diagonal band,
// H2O its scattered survivors, a recall a span that comes back. Built from
// the session's eviction log as it grows (only new events are read each
// frame) and rastered to the panel's pixels at most a few times a second,
// so a frame costs the same at 32K tokens as at 300. The scrubber picks a
// step and the token strip and occupancy show the cache as it was then (the
// log replayed up to that step).
struct EvictionMap {
  int layer = -1, head = -1;
  uint64_t processed = 0;      // events of the log read so far (folded ones included)
  uint32_t first_step = 0;     // the log had folded before it: history starts here
  bool from_base = false;
  int64_t last_step = -1;
  // Per position: the steps [start, end) it was held (end = open while held).
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> spans;
  std::vector<uint32_t> recalls;  // per position
  // The raster: runs of equal shade per pixel row.
  struct Run {
    uint16_t x0, x1, row;
    uint8_t level;  // 0: every written position of the cell evicted .. 4: all held
  };
  std::vector<Run> runs;
  int cols = 0, rows = 0;
  uint32_t raster_steps = 0, raster_positions = 0;
  uint64_t raster_events = UINT64_MAX;
  double raster_time = -1;
  // Per cell, for the tooltip: held and written positions.
  std::vector<uint32_t> held, written;
};

struct TimelineView {
  int step = -1;  // -1: live
  // The replay for `step` of the log that `log_id` points at, kept until
  // either changes.
  const kv::EventLog* log_id = nullptr;
  size_t log_events = 0;
  int replayed_step = -2;
  SessionSnapshot at_step;
  int map_layer = 0, map_head = 0;  // the eviction map's table
  EvictionMap map;
  ImVec4 map_rect{};                 // x, y, w, h of the map on screen (for tests)
};
void draw_timeline(const SessionSnapshot& s, TimelineView& view);
// `s` as the scrubber shows it: `s` itself when live (or without a log),
// else the cache state at the chosen step.
const SessionSnapshot& scrubbed(const SessionSnapshot& s, TimelineView& view);
// The last step of a log, -1 for an empty one.
int last_step(const kv::EventLog& log);

}  // namespace kvscope::gui
