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

void draw_occupancy(const SessionSnapshot& s);

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
  int head = -1;        // -1: mean over heads
  float gamma = 0.4f;   // colour = p^gamma, so small probabilities show
  float zoom = 1;       // >= 1: the visible share of positions is 1/zoom
  float first = 0;      // first visible position when zoomed
  ImVec4 last_rect{};   // x, y, w, h of the map on screen (for tests)
  bool drew_cells = false;
};
void draw_heatmap(const SessionSnapshot& s, HeatmapView& view, const Fonts& fonts);
// The heatmap as drawn (same rows, positions, zoom and colours), w x h RGBA
// pixels, top row first. Empty when there are no rows.
std::vector<uint8_t> heatmap_pixels(const SessionSnapshot& s, const HeatmapView& view, int width, int height);

// ------------------------------------------------------- eviction timeline
// Evictions per decode step per layer, from the session's eviction log;
// the scrubber picks a step and the token strip and occupancy show the
// cache as it was then (the log replayed up to that step).
struct TimelineView {
  int step = -1;  // -1: live
  // The replay for `step` of the log that `log_id` points at, kept until
  // either changes.
  const kv::EventLog* log_id = nullptr;
  size_t log_events = 0;
  int replayed_step = -2;
  SessionSnapshot at_step;
};
void draw_timeline(const SessionSnapshot& s, TimelineView& view);
// `s` as the scrubber shows it: `s` itself when live (or without a log),
// else the cache state at the chosen step.
const SessionSnapshot& scrubbed(const SessionSnapshot& s, TimelineView& view);
// The last step of a log, -1 for an empty one.
int last_step(const kv::EventLog& log);

}  // namespace kvscope::gui
