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
};
// Lays out token pieces left to right, wrapping at the available width, and
// reserves the space. `style(i)` styles token i; `tooltip(i)` runs inside a
// tooltip when token i is hovered. Returns the hovered index or -1.
int draw_token_flow(const std::vector<std::string>& pieces, size_t begin, size_t end, ImFont* font,
                    const std::function<TokenStyle(size_t)>& style,
                    const std::function<void(size_t)>& tooltip);

// The whole context, each token shaded by how many layers hold it, evicted
// ones dimmed and struck through.
void draw_token_strip(const SessionSnapshot& s, const Fonts& fonts);

struct HeatmapView {
  int layer = 0;
  int head = -1;        // -1: mean over heads
  float gamma = 0.4f;   // colour = p^gamma, so small probabilities show
  ImVec4 last_rect{};   // x, y, w, h of the map on screen (for tests)
  bool drew_cells = false;
};
void draw_heatmap(const SessionSnapshot& s, HeatmapView& view, const Fonts& fonts);

}  // namespace kvscope::gui
