// [SECTION] numbers
// [SECTION] occupancy
// [SECTION] token flow and strip
// [SECTION] attention heatmap
#include "app/gui/inspector.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <unordered_map>
#include <cmath>

namespace kvscope::gui {

// ==================================================================== numbers

std::string format_bytes(double bytes) {
  if (bytes >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", bytes / (1024.0 * 1024 * 1024));
  if (bytes >= 1024.0 * 1024) return fmt::format("{:.2f} MiB", bytes / (1024.0 * 1024));
  if (bytes >= 1024.0) return fmt::format("{:.0f} KiB", bytes / 1024.0);
  return fmt::format("{:.0f} B", bytes);
}

namespace {

ImU32 u32(const ImVec4& c) { return ImGui::ColorConvertFloat4ToU32(c); }

}  // namespace

// ================================================================= occupancy

std::string layer_name(const SessionSnapshot& s, int layer) {
  const bool local = layer >= 0 && static_cast<size_t>(layer) < s.layers.size() && s.layers[layer].window > 0;
  return fmt::format("layer {}{}", layer, local ? " · local" : "");
}

void layer_picker_tooltip(const SessionSnapshot& s, int layer, const char* what) {
  if (!ImGui::IsItemHovered()) return;
  const uint32_t window =
      layer >= 0 && static_cast<size_t>(layer) < s.layers.size() ? s.layers[layer].window : 0;
  if (window == 0)
    ImGui::SetTooltip("%s", what);
  else
    ImGui::SetTooltip("%s\nLayer %d is local: its queries see only the last %u positions, and its cache lets go of "
                      "the older ones by the model's design (no policy acts on it)",
                      what, layer, window);
}

OccupancyDrawn draw_occupancy(const SessionSnapshot& s) {
  const std::string format = s.spec.name();
  const size_t n_layer = s.layers.size();
  const size_t n_head = std::max<size_t>(1, s.n_kv_head);
  OccupancyDrawn drawn;
  if (n_layer == 0) {
    ImGui::TextColored(colour::muted, "No cache yet.");
    return drawn;
  }
  ImGui::TextColored(colour::muted, "Total %s of %s (%s), %.0f bytes per token", format_bytes(s.cache_bytes_used).c_str(),
                     format_bytes(static_cast<double>(s.cache_bytes_full)).c_str(), format.c_str(), s.bytes_per_token);
  const bool per_head = s.head_live.size() == n_layer * n_head;
  auto live = [&](size_t layer, size_t head) -> uint32_t {
    return per_head ? s.head_live[layer * n_head + head] : s.layers[layer].live_max;
  };
  auto budget = [&](size_t layer, size_t head) -> uint32_t {
    return s.head_budget.size() == n_layer * n_head ? s.head_budget[layer * n_head + head] : 0;
  };
  // A layer whose budget is not the one most layers have (PyramidKV's
  // pyramid, a model's own per-layer windows) is marked.
  // (Sliding-window layers have no budget: the window is theirs.)
  std::map<uint32_t, size_t> budget_count;
  for (size_t layer = 0; layer < n_layer; ++layer)
    if (s.layers[layer].window == 0) budget_count[budget(layer, 0)]++;
  uint32_t common = 0;
  size_t most = 0;
  for (const auto& [b, count] : budget_count)
    if (count > most) most = count, common = b;
  const bool varies = budget_count.size() > 1;
  auto own_budget = [&](size_t layer) {
    if (!varies) return false;
    if (most == 1) return true;  // every layer its own (a pyramid)
    for (size_t h = 0; h < n_head; ++h)
      if (budget(layer, h) != common) return true;
    return false;
  };
  // Rows: layers; columns: kv heads. Compact enough for 32 x 8 beside the
  // heatmap: rows shrink to 4 px, labels thin out to every few layers.
  const float text_h = ImGui::GetTextLineHeight();
  const float label_w = ImGui::CalcTextSize("L00 ◆").x + 4;
  const float width = ImGui::GetContentRegionAvail().x - label_w;
  const float row_h = std::clamp(std::floor(std::min(200.0f, 28.0f * n_layer) / n_layer), 4.0f, text_h + 4);
  const size_t label_every = static_cast<size_t>(std::ceil((text_h + 1) / row_h));
  const float cell_w = width / n_head;
  const float gap = cell_w > 6 ? 2.0f : 0.0f;
  ImDrawList* draw = ImGui::GetWindowDrawList();
  const ImVec2 p = ImGui::GetCursorScreenPos();
  ImGui::PushFont(ImGui::GetFont());
  bool any_own = false;
  uint32_t window = 0;  // the sliding window, when the model has local layers
  for (size_t layer = 0; layer < n_layer; ++layer) {
    const float y = p.y + layer * row_h;
    const bool local = s.layers[layer].window > 0;
    const bool own = !local && own_budget(layer);
    any_own |= own;
    drawn.own_budget_layers += own;
    drawn.local_layers += local;
    if (local) window = s.layers[layer].window;
    if (layer % label_every == 0)
      draw->AddText({p.x, y + (row_h - text_h) * 0.5f},
                    u32(own ? colour::recalled : local ? colour::window_fill : colour::muted),
                    fmt::format("L{}{}", layer, own ? " ◆" : "").c_str());
    for (size_t head = 0; head < n_head; ++head) {
      const float x = p.x + label_w + head * cell_w;
      const ImVec2 a{x, y + (row_h > 5 ? 1.0f : 0.0f)}, b{x + cell_w - gap, y + row_h - (row_h > 5 ? 1.0f : 0.0f)};
      const uint32_t capacity = std::max(1u, s.layers[layer].capacity);
      draw->AddRectFilled(a, b, u32(colour::bar_bg));
      const float f = std::min(1.0f, static_cast<float>(live(layer, head)) / capacity);
      if (f > 0)
        draw->AddRectFilled(a, {a.x + (b.x - a.x) * f, b.y}, u32(local ? colour::window_fill : colour::bar_fill));
      const uint32_t bud = budget(layer, head);
      if (bud > 0 && bud < capacity) {
        const float bx = a.x + (b.x - a.x) * bud / capacity;
        draw->AddLine({bx, a.y}, {bx, b.y}, u32(colour::text), 1.5f);
      }
    }
  }
  ImGui::PopFont();
  const float grid_h = row_h * n_layer;
  drawn.rect = {p.x, p.y, label_w + width, grid_h};
  drawn.layers = n_layer;
  drawn.heads = n_head;
  ImGui::InvisibleButton("##occupancy_grid", {label_w + width, grid_h});
  if (ImGui::IsItemHovered()) {
    const ImVec2 m = ImGui::GetIO().MousePos;
    const size_t layer = std::min(n_layer - 1, static_cast<size_t>(std::max(0.0f, m.y - p.y) / row_h));
    const size_t head =
        std::min(n_head - 1, static_cast<size_t>(std::max(0.0f, m.x - p.x - label_w) / std::max(1.0f, cell_w)));
    const double layer_bytes_per_slot = s.layers[layer].slot_bytes;
    const uint32_t bud = budget(layer, head);
    const uint32_t w = s.layers[layer].window;
    const std::string kind =
        w > 0 ? fmt::format(" (local: attends to the last {} tokens only; no policy acts here)", w) : "";
    ImGui::SetTooltip("layer %zu%s, kv head %zu: %u of %u slots live%s\n%s: %s held (%.0f bytes per slot)%s", layer,
                      kind.c_str(), head, live(layer, head), s.layers[layer].capacity,
                      bud ? fmt::format(", budget {}", bud).c_str() : "", format.c_str(),
                      format_bytes(layer_bytes_per_slot * live(layer, head)).c_str(), layer_bytes_per_slot,
                      own_budget(layer) && w == 0 ? "\nthis layer has its own budget" : "");
  }
  const uint32_t global_capacity = s.capacity;
  ImGui::TextColored(colour::muted, "rows: %zu layers  ·  columns: %zu kv heads  ·  fill: live of %u slots%s%s",
                     n_layer, n_head, global_capacity,
                     s.head_budget.empty() || std::all_of(s.head_budget.begin(), s.head_budget.end(),
                                                          [](uint32_t b) { return b == 0; })
                         ? ""
                         : "  ·  tick: budget",
                     any_own ? "  ·  ◆ own budget" : "");
  if (drawn.local_layers > 0)
    ImGui::TextColored(colour::window_fill, "%zu local layers: each holds only the last %u tokens (its sliding window)",
                       drawn.local_layers, window);
  return drawn;
}

// ======================================================== token flow and strip

namespace {

// Where each token of a flow sits, kept between frames per flow (ImGui ID):
// laying out 32K tokens measures 32K strings, so the layout grows with the
// tokens appended and is redone only when the width, the font or earlier
// tokens change. Drawing then walks only the lines in view.
struct FlowLayout {
  size_t begin = 0, end = 0;
  float width = 0;
  ImFont* font = nullptr;
  std::string last_piece;
  std::vector<ImVec2> at;  // top-left of token begin + i, relative to the flow
  std::vector<float> w;
  float x = 0, y = 0;      // where the next token goes
  int last_frame = 0;
};

std::unordered_map<ImGuiID, FlowLayout>& flow_layouts() {
  static std::unordered_map<ImGuiID, FlowLayout> layouts;
  return layouts;
}

}  // namespace

int draw_token_flow(const std::vector<std::string>& pieces, size_t begin, size_t end, ImFont* font,
                    const std::function<TokenStyle(size_t)>& style, const std::function<void(size_t)>& tooltip) {
  ImGui::PushFont(font);
  ImDrawList* draw = ImGui::GetWindowDrawList();
  const ImVec2 origin = ImGui::GetCursorScreenPos();
  const float width = std::max(50.0f, ImGui::GetContentRegionAvail().x);
  const float line_h = ImGui::GetTextLineHeight() + 4;
  const float gap = 2;
  const ImVec2 mouse = ImGui::GetIO().MousePos;
  const bool window_hovered = ImGui::IsWindowHovered();
  end = std::min(end, pieces.size());
  begin = std::min(begin, end);

  FlowLayout& l = flow_layouts()[ImGui::GetID("##token_flow")];
  l.last_frame = ImGui::GetFrameCount();
  const size_t kept = l.end - l.begin;
  const bool extends = l.begin == begin && l.width == width && l.font == font && l.end <= end && l.end > begin &&
                       pieces[l.end - 1] == l.last_piece && l.at.size() == kept;
  if (!extends) l = FlowLayout{begin, begin, width, font, {}, {}, {}, 0, 0, l.last_frame};
  for (size_t i = l.end; i < end; ++i) {
    const float w = ImGui::CalcTextSize(pieces[i].c_str()).x + 2;
    if (l.x > 0 && l.x + w > width) l.x = 0, l.y += line_h;
    l.at.push_back({l.x, l.y});
    l.w.push_back(w);
    l.x += w + gap;
  }
  l.end = end;
  if (end > begin) l.last_piece = pieces[end - 1];

  // Only the lines inside the clip rectangle are drawn.
  const float clip_top = draw->GetClipRectMin().y - origin.y - line_h;
  const float clip_bottom = draw->GetClipRectMax().y - origin.y;
  const auto first = std::lower_bound(l.at.begin(), l.at.end(), clip_top,
                                      [](const ImVec2& a, float y) { return a.y < y; });
  int hovered = -1;
  for (size_t k = static_cast<size_t>(first - l.at.begin()); k < l.at.size() && l.at[k].y <= clip_bottom; ++k) {
    const size_t i = begin + k;
    const ImVec2 a{origin.x + l.at[k].x, origin.y + l.at[k].y}, b{a.x + l.w[k], a.y + line_h - 1};
    const TokenStyle st = style ? style(i) : TokenStyle{};
    // A faint chip per token shows where one token ends and the next begins.
    draw->AddRectFilled(a, b, st.background ? st.background : IM_COL32(255, 255, 255, 14), 3);
    draw->AddText({a.x + 1, a.y + 2}, u32(st.colour), pieces[i].c_str());
    if (st.struck) {
      const float mid = a.y + line_h * 0.5f;
      draw->AddLine({a.x, mid}, {b.x, mid}, u32(st.colour), 1.2f);
    }
    if (st.underline) draw->AddLine({a.x, b.y - 1}, {b.x, b.y - 1}, u32(colour::pinned), 2.0f);
    if (window_hovered && mouse.x >= a.x && mouse.x < b.x && mouse.y >= a.y && mouse.y < b.y) {
      hovered = static_cast<int>(i);
      draw->AddRect(a, b, u32(colour::text), 3);
    }
  }
  ImGui::PopFont();
  ImGui::Dummy({width, (l.at.empty() ? 0 : l.y) + line_h});
  // Layouts of flows no longer drawn (a closed session, an old turn) go.
  if (ImGui::GetFrameCount() % 600 == 0)
    std::erase_if(flow_layouts(), [](const auto& e) { return ImGui::GetFrameCount() - e.second.last_frame > 120; });
  if (hovered >= 0 && tooltip) {
    ImGui::BeginTooltip();
    tooltip(static_cast<size_t>(hovered));
    ImGui::EndTooltip();
  }
  return hovered;
}

// The y of token `index` of the flow last drawn under the current ID stack
// (for scrolling to a position), -1 when it has not been laid out.
float token_flow_y(size_t index) {
  const auto it = flow_layouts().find(ImGui::GetID("##token_flow"));
  if (it == flow_layouts().end() || index < it->second.begin || index - it->second.begin >= it->second.at.size())
    return -1;
  return it->second.at[index - it->second.begin].y;
}

namespace {

// Per layer, what the log says of `position` up to `at_step`: the last
// eviction or recall in each layer (kv head 0's, as the strip's shading).
void describe_position_history(const SessionSnapshot& s, int32_t position, int at_step) {
  const size_t n_layer = s.layers.size();
  if (!s.log) {
    ImGui::TextColored(colour::muted, "no eviction policy: every layer keeps it");
    return;
  }
  struct LayerFate {
    int kind = 0;  // 0 kept, 1 evicted, 2 recalled
    uint32_t step = 0;
    float score = 0;
  };
  std::vector<LayerFate> fate(n_layer);
  for (const kv::TraceEvent& event : s.log->events()) {
    const bool recall = std::holds_alternative<kv::RecallEvent>(event);
    const kv::EvictionEvent* e = recall ? &std::get<kv::RecallEvent>(event)
                                        : std::get_if<kv::EvictionEvent>(&event);
    if (!e || e->position != position || e->kv_head != 0 || e->layer >= n_layer) continue;
    if (at_step >= 0 && static_cast<int>(e->step) > at_step) continue;
    fate[e->layer] = {recall ? 2 : 1, e->step, e->score};
  }
  for (size_t layer = 0; layer < n_layer; ++layer) {
    const LayerFate& f = fate[layer];
    if (f.kind == 0)
      ImGui::Text("L%zu  kept", layer);
    else if (f.kind == 1)
      ImGui::TextColored(colour::evicted, "L%zu  evicted before step %u  (score %.4g)", layer, f.step, f.score);
    else
      ImGui::TextColored(colour::recalled, "L%zu  recalled at step %u", layer, f.step);
  }
}

}  // namespace

void draw_token_strip(const SessionSnapshot& s, const Fonts& fonts, StripDrag& drag,
                      const std::vector<int32_t>& regretted, int at_step,
                      const std::function<void(kv::PinnedSpan)>& on_pin) {
  // Only global layers count: a sliding-window layer forgets by design.
  const size_t n_layer = std::max<size_t>(1, s.global_layers ? s.global_layers : s.layers.size());
  const size_t local_layers = s.layers.size() > n_layer ? s.layers.size() - n_layer : 0;
  auto held = [&](size_t i) -> size_t { return i < s.layers_holding.size() ? s.layers_holding[i] : 0; };
  auto pending = [&](size_t i) { return i >= s.written_positions; };
  auto is_regretted = [&](size_t i) {
    return std::find(regretted.begin(), regretted.end(), static_cast<int32_t>(i)) != regretted.end();
  };
  const int lo = std::min(drag.anchor, drag.current), hi = std::max(drag.anchor, drag.current);

  // The minimap: the whole context in one bar (evicted share in red, held in
  // blue, pinned and regretted spans marked); click it, or type a position,
  // to bring that part of the strip into view.
  int jump_to = -1;
  {
    const size_t n = s.pieces.size();
    ImDrawList* draw = ImGui::GetWindowDrawList();
    const float goto_w = ImGui::GetFontSize() * 6;
    const float mw = std::max(40.0f, ImGui::GetContentRegionAvail().x - goto_w - ImGui::GetStyle().ItemSpacing.x);
    const float mh = ImGui::GetFrameHeight();
    const ImVec2 p = ImGui::GetCursorScreenPos();
    draw->AddRectFilled(p, {p.x + mw, p.y + mh}, u32(colour::bar_bg), 2);
    const int cols = std::max(1, std::min(static_cast<int>(mw / 2), static_cast<int>(std::max<size_t>(1, n))));
    const float cw = mw / cols;
    for (int c = 0; c < cols && n > 0; ++c) {
      const size_t i0 = n * c / cols, i1 = std::max(i0 + 1, n * (c + 1) / cols);
      size_t evicted = 0, written = 0;
      bool pinned = false, warm = false;
      for (size_t i = i0; i < i1 && i < n; ++i) {
        if (!pending(i)) ++written, evicted += held(i) == 0;
        pinned |= s.pins.contains(static_cast<int32_t>(i));
      }
      for (int32_t r : regretted) warm |= r >= static_cast<int32_t>(i0) && r < static_cast<int32_t>(i1);
      const float x0 = p.x + c * cw, x1 = x0 + cw;
      if (written > 0) {
        const float f = static_cast<float>(evicted) / written;
        const ImVec4 kept = colour::bar_fill, gone = colour::diverged;
        const ImVec4 mix{kept.x + (gone.x - kept.x) * f, kept.y + (gone.y - kept.y) * f, kept.z + (gone.z - kept.z) * f,
                         0.85f};
        draw->AddRectFilled({x0, p.y + 3}, {x1, p.y + mh - 3}, u32(mix));
      }
      if (pinned) draw->AddRectFilled({x0, p.y}, {x1, p.y + 3}, u32(colour::pinned));
      if (warm) draw->AddRectFilled({x0, p.y + mh - 3}, {x1, p.y + mh}, u32(colour::recalled));
    }
    ImGui::InvisibleButton("##minimap", {mw, mh});
    if (n > 0 && ImGui::IsItemHovered()) {
      const size_t at = std::min(n - 1, static_cast<size_t>((ImGui::GetIO().MousePos.x - p.x) / mw * n));
      ImGui::SetTooltip("position %zu of %zu: click to show it in the strip\nred: evicted · blue: held · "
                        "top mark: pinned · bottom mark: regretted",
                        at, n);
      if (ImGui::IsItemClicked()) jump_to = static_cast<int>(at);
    }
    ImGui::SameLine();
    ImGui::SetNextItemWidth(goto_w);
    int& go = *ImGui::GetStateStorage()->GetIntRef(ImGui::GetID("##goto_position"), 0);
    if (ImGui::InputInt("##goto", &go, 0, 0, ImGuiInputTextFlags_EnterReturnsTrue))
      jump_to = std::clamp(go, 0, static_cast<int>(std::max<size_t>(1, n)) - 1);
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("Go to a token position (Enter)");
  }
  ImGui::BeginChild("##strip_tokens", {0, 0}, false);
  if (jump_to >= 0) {
    const float y = token_flow_y(static_cast<size_t>(jump_to));
    if (y >= 0) ImGui::SetScrollY(std::max(0.0f, y - ImGui::GetTextLineHeight() * 2));
  }
  const int hovered = draw_token_flow(
      s.pieces, 0, s.pieces.size(), fonts.tokens,
      [&](size_t i) {
        TokenStyle st;
        if (drag.anchor >= 0 && static_cast<int>(i) >= lo && static_cast<int>(i) <= hi)
          st.background = ImGui::ColorConvertFloat4ToU32({colour::pinned.x, colour::pinned.y, colour::pinned.z, 0.35f});
        else if (is_regretted(i))
          st.background = ImGui::ColorConvertFloat4ToU32({colour::diverged.x, colour::diverged.y, colour::diverged.z, 0.30f});
        if (s.pins.contains(static_cast<int32_t>(i))) {
          st.colour = colour::pinned;
          st.underline = true;
        }
        if (pending(i)) return st;
        const size_t h = held(i);
        if (h == 0) {
          st.colour = colour::evicted;
          st.struck = true;
        } else if (h < n_layer && !st.underline) {
          // Partly evicted: the fewer layers hold it, the dimmer.
          const float f = 0.45f + 0.55f * static_cast<float>(h) / n_layer;
          st.colour = {colour::text.x * f, colour::text.y * f, colour::text.z * f, 1};
        }
        return st;
      },
      [&](size_t i) {
        if (drag.anchor >= 0 && lo != hi) {
          ImGui::Text("release to pin positions %d..%d (%d tokens)", lo, hi, hi - lo + 1);
          return;
        }
        ImGui::Text("position %zu: \"%s\" (id %d)", i, s.pieces[i].c_str(), i < s.tokens.size() ? s.tokens[i] : -1);
        if (s.pins.contains(static_cast<int32_t>(i))) ImGui::TextColored(colour::pinned, "pinned: no policy evicts it");
        if (is_regretted(i))
          ImGui::TextColored(colour::diverged, "regretted: session A attended to it after this cache evicted it");
        if (pending(i)) {
          ImGui::TextColored(colour::muted, "sampled; written to the cache with the next step");
        } else {
          ImGui::TextColored(held(i) ? colour::text : colour::evicted, "held by %zu of %zu %slayers%s", held(i), n_layer,
                             local_layers ? "global " : "", at_step >= 0 ? fmt::format(" at step {}", at_step).c_str() : "");
          if (local_layers)
            ImGui::TextColored(colour::muted, "(the %zu local layers hold only their sliding window)", local_layers);
          describe_position_history(s, static_cast<int32_t>(i), at_step);
        }
        ImGui::Separator();
        ImGui::TextColored(colour::muted, "Legend: normal = kept,");
        ImGui::SameLine();
        ImGui::TextColored(colour::evicted, "dim struck = evicted,");
        ImGui::SameLine();
        ImGui::TextColored(colour::pinned, "underlined = pinned");
        if (on_pin) ImGui::TextColored(colour::muted, "Drag across tokens to pin them.");
      });
  ImGui::EndChild();
  // Drag to select a span; release pins it.
  if (on_pin) {
    if (hovered >= 0 && ImGui::IsMouseClicked(ImGuiMouseButton_Left)) drag.anchor = drag.current = hovered;
    if (drag.anchor >= 0 && hovered >= 0 && ImGui::IsMouseDown(ImGuiMouseButton_Left)) drag.current = hovered;
    if (drag.anchor >= 0 && ImGui::IsMouseReleased(ImGuiMouseButton_Left)) {
      if (drag.current != drag.anchor || ImGui::GetIO().KeyShift) on_pin({lo, hi + 1});
      drag = {};
    }
  }
}

// ========================================================== attention heatmap

namespace {

// Rows of the chosen layer, oldest step first.
std::vector<const ProbeRow*> rows_of_layer(const SessionSnapshot& s, int layer) {
  std::vector<const ProbeRow*> rows;
  for (const auto& r : s.probes)
    if (static_cast<int>(r->layer) == layer) rows.push_back(r.get());
  return rows;
}

float probability(const ProbeRow& r, int head, uint32_t position) { return r.prob(head, position); }

void draw_legend(float gamma, float width) {
  ImDrawList* draw = ImGui::GetWindowDrawList();
  const ImVec2 p = ImGui::GetCursorScreenPos();
  const float h = 10;
  const int steps = 64;
  for (int i = 0; i < steps; ++i) {
    const float x0 = p.x + width * i / steps, x1 = p.x + width * (i + 1) / steps;
    draw->AddRectFilled({x0, p.y}, {x1, p.y + h}, viridis((i + 0.5f) / steps));
  }
  // Ticks at round probabilities, placed where their colour sits.
  ImGui::PushFont(ImGui::GetFont());
  for (float prob : {0.001f, 0.01f, 0.1f, 0.5f, 1.0f}) {
    const float x = p.x + width * std::pow(prob, gamma);
    draw->AddLine({x, p.y + h}, {x, p.y + h + 4}, u32(colour::muted));
    const std::string label = prob < 0.01f ? fmt::format("{:g}", prob) : fmt::format("{:g}", prob);
    const float tw = ImGui::CalcTextSize(label.c_str()).x;
    draw->AddText({std::clamp(x - tw / 2, p.x, p.x + width - tw), p.y + h + 4}, u32(colour::muted), label.c_str());
  }
  ImGui::PopFont();
  ImGui::Dummy({width, h + 4 + ImGui::GetTextLineHeight()});
}

// Which positions the map shows (zoom) and how many go into one cell: long
// contexts put several positions in a cell (their largest probability), so
// a cell is at least 2 pixels wide and the frame stays cheap.
struct HeatmapLayout {
  uint32_t first = 0, visible = 0, per_cell = 1, n_cells = 0;
};

HeatmapLayout heatmap_layout(uint32_t n_pos, const HeatmapView& view, float width) {
  HeatmapLayout l;
  l.visible = std::max(1u, static_cast<uint32_t>(std::ceil(n_pos / std::max(1.0f, view.zoom))));
  // Zoomed in at the newest positions, the view follows them as the context grows.
  const uint32_t last_first = n_pos > l.visible ? n_pos - l.visible : 0;
  l.first = view.follow ? last_first : std::min(static_cast<uint32_t>(std::max(0.0f, view.first)), last_first);
  l.per_cell = std::max(1u, static_cast<uint32_t>(std::ceil(l.visible / std::max(1.0f, width / 2))));
  l.n_cells = (l.visible + l.per_cell - 1) / l.per_cell;
  return l;
}

// The largest probability of the held positions in [p0, p1) at row r, or
// -1 when none is held (evicted), -2 when none existed yet. The held
// positions in the range are one slice of the row's sorted list.
float cell_value(const ProbeRow& r, int head, uint32_t p0, uint32_t p1) {
  if (p0 > r.step || p0 >= r.n_pos) return -2;
  const auto first = std::lower_bound(r.positions.begin(), r.positions.end(), static_cast<int32_t>(p0));
  const auto last = std::lower_bound(first, r.positions.end(), static_cast<int32_t>(p1));
  if (first == last) return -1;
  const size_t n = r.positions.size();
  float prob = -1;
  for (auto it = first; it != last; ++it) {
    const size_t k = static_cast<size_t>(it - r.positions.begin());
    if (r.slots[k] < 0 && head < 0) continue;  // the mean is over head 0's table, as the strip's shading
    float v = 0;
    if (head >= 0) {
      v = head < static_cast<int>(r.n_head) ? r.probs[size_t(head) * n + k] : 0;
    } else {
      for (uint32_t h = 0; h < r.n_head; ++h) v += r.probs[size_t{h} * n + k];
      v /= std::max(1u, r.n_head);
    }
    prob = std::max(prob, v);
  }
  return prob;
}

}  // namespace

std::vector<uint8_t> heatmap_pixels(const SessionSnapshot& s, const HeatmapView& view, int width, int height) {
  const std::vector<const ProbeRow*> rows = rows_of_layer(s, view.layer);
  if (rows.empty() || width <= 0 || height <= 0) return {};
  uint32_t n_pos = 0;
  for (const ProbeRow* r : rows) n_pos = std::max(n_pos, r->n_pos);
  std::vector<uint32_t> columns;  // held_only: the positions held at the newest row
  if (view.held_only)
    for (int32_t pos : rows.back()->positions) columns.push_back(static_cast<uint32_t>(pos));
  const HeatmapLayout l =
      heatmap_layout(view.held_only ? std::max<uint32_t>(1, columns.size()) : n_pos, view, static_cast<float>(width));
  std::vector<uint8_t> rgba(size_t(width) * height * 4);
  const ImVec4 bg = colour::bar_bg;
  for (int y = 0; y < height; ++y) {
    const ProbeRow& r = *rows[std::min(rows.size() - 1, size_t(y) * rows.size() / height)];
    for (int x = 0; x < width; ++x) {
      const uint32_t cell = static_cast<uint32_t>(uint64_t(x) * l.n_cells / width);
      const uint32_t p0 = l.first + cell * l.per_cell;
      const uint32_t p1 = std::min(p0 + l.per_cell, l.first + l.visible);
      float v = -2;
      if (!view.held_only)
        v = cell_value(r, view.head, p0, p1);
      else
        for (uint32_t k = p0; k < p1 && k < columns.size(); ++k)
          v = std::max(v, cell_value(r, view.head, columns[k], columns[k] + 1));
      ImU32 c = v < -1 ? ImGui::ColorConvertFloat4ToU32(bg)
                : v < 0 ? ((x + y) % 6 < 2 ? u32(colour::evicted) : IM_COL32(40, 40, 46, 255))  // hatched
                        : viridis(std::pow(v, view.gamma));
      uint8_t* px = &rgba[(size_t(y) * width + x) * 4];
      px[0] = c & 0xFF, px[1] = (c >> 8) & 0xFF, px[2] = (c >> 16) & 0xFF, px[3] = 255;
    }
  }
  return rgba;
}

namespace {

constexpr int kHeatLevels = 48;
constexpr int kEveryHead = -2;  // HeatmapView::head: one small map per head

// The map's runs of equal colour (quantized to kHeatLevels), per row: made
// once per new row or change of view, drawn every frame.
void build_heatmap(HeatmapView::Cache& c, const std::vector<const ProbeRow*>& rows, const HeatmapView& view,
                   float width, float height) {
  c.newest = rows.back();
  c.n_rows = rows.size();
  c.layer = view.layer, c.head = view.head, c.gamma = view.gamma, c.zoom = view.zoom, c.first = view.first;
  c.follow = view.follow;
  c.width = width, c.height = height, c.held_only = view.held_only;
  c.n_pos = 0;
  for (const ProbeRow* r : rows) c.n_pos = std::max(c.n_pos, r->n_pos);
  c.columns.clear();
  if (view.held_only) {
    const ProbeRow& newest = *rows.back();
    for (int32_t pos : newest.positions) c.columns.push_back(static_cast<uint32_t>(pos));
  }
  const uint32_t n_cols = view.held_only ? static_cast<uint32_t>(c.columns.size()) : c.n_pos;
  const HeatmapLayout l = heatmap_layout(std::max(1u, n_cols), view, width);
  c.first_col = l.first, c.visible = l.visible, c.per_cell = l.per_cell, c.n_cells = l.n_cells;
  const float cell_w = width / std::max(1u, l.n_cells), cell_h = height / rows.size();
  c.runs.clear();
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    const ProbeRow& r = *rows[ri];
    const float y0 = ri * cell_h, y1 = y0 + std::max(1.0f, cell_h - (cell_h > 4 ? 1 : 0));
    int run_level = -2;
    uint32_t run_start = 0;
    auto flush = [&](uint32_t end) {
      if (run_level == -2 || end == run_start) return;
      c.runs.push_back({run_start * cell_w, end * cell_w + (cell_w < 1 ? 1 : 0), y0, y1, run_level});
    };
    uint32_t cell = 0;
    for (; cell < l.n_cells; ++cell) {
      const uint32_t c0 = l.first + cell * l.per_cell, c1 = std::min(c0 + l.per_cell, l.first + l.visible);
      float v = -2;
      if (c.columns.empty()) {
        v = cell_value(r, view.head, c0, c1);
      } else {
        for (uint32_t k = c0; k < c1 && k < c.columns.size(); ++k) v = std::max(v, cell_value(r, view.head, c.columns[k], c.columns[k] + 1));
      }
      if (v < -1) break;  // later positions did not exist at this step
      const int level = v < 0 ? -1 : std::min(kHeatLevels - 1, static_cast<int>(std::pow(v, view.gamma) * kHeatLevels));
      if (level != run_level) {
        flush(cell);
        run_level = level;
        run_start = cell;
      }
    }
    flush(cell);
  }
}

// Every query head of the layer as its own small map, in a grid; each
// keeps its own cached rectangles.
void draw_every_head(const std::vector<const ProbeRow*>& rows, HeatmapView& view, uint32_t n_head, ImVec2 p,
                     float width, float height) {
  ImDrawList* draw = ImGui::GetWindowDrawList();
  uint32_t cols = std::clamp(static_cast<uint32_t>(std::ceil(std::sqrt(n_head * width / std::max(1.0f, height)))), 1u,
                             std::max(1u, n_head));
  const uint32_t grid_rows = (n_head + cols - 1) / cols;
  cols = (n_head + grid_rows - 1) / grid_rows;  // balanced: 6 heads in 3 x 2, not 5 + 1
  const float label_h = ImGui::GetTextLineHeight();
  const float tile_w = width / cols, tile_h = height / std::max(1u, grid_rows);
  view.head_caches.resize(n_head);
  for (uint32_t h = 0; h < n_head; ++h) {
    const ImVec2 o{p.x + (h % cols) * tile_w + 2, p.y + (h / cols) * tile_h + label_h};
    const float w = tile_w - 4, hgt = std::max(4.0f, tile_h - label_h - 3);
    HeatmapView one = view;
    one.head = static_cast<int>(h);
    HeatmapView::Cache& c = view.head_caches[h];
    if (c.newest != rows.back() || c.n_rows != rows.size() || c.layer != view.layer || c.gamma != view.gamma ||
        c.zoom != view.zoom || c.first != view.first || c.follow != view.follow || c.width != w || c.height != hgt ||
        c.held_only != view.held_only || c.head != one.head)
      build_heatmap(c, rows, one, w, hgt);
    draw->AddText({o.x, o.y - label_h}, u32(colour::muted), fmt::format("head {}", h).c_str());
    for (const HeatmapView::Run& run : c.runs)
      draw->AddRectFilled({o.x + run.x0, o.y + run.y0}, {o.x + run.x1, o.y + run.y1},
                          run.level < 0 ? IM_COL32(40, 40, 46, 255) : viridis((run.level + 0.5f) / kHeatLevels));
  }
}

}  // namespace

void draw_heatmap(const SessionSnapshot& s, HeatmapView& view, const Fonts& fonts) {
  const int n_layer = static_cast<int>(s.layers.size());
  view.drew_cells = false;
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * (s.global_layers < s.layers.size() ? 8.5f : 6.0f));
  const std::string layer_label = layer_name(s, view.layer);
  if (ImGui::BeginCombo("##layer", layer_label.c_str())) {
    for (int l = 0; l < n_layer; ++l)
      if (ImGui::Selectable(layer_name(s, l).c_str(), l == view.layer)) view.layer = l;
    ImGui::EndCombo();
  }
  layer_picker_tooltip(s, view.layer, "Which layer's attention to show");
  const uint32_t n_head = s.probes.empty() ? 0 : s.probes.back()->n_head;
  ImGui::SameLine();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 8.5f);
  const std::string head_label = view.head == kEveryHead ? "every head"
                                 : view.head < 0          ? "mean of heads"
                                                          : fmt::format("head {}", view.head);
  if (ImGui::BeginCombo("##head", head_label.c_str())) {
    if (ImGui::Selectable("mean of heads", view.head == -1)) view.head = -1;
    if (ImGui::Selectable("every head", view.head == kEveryHead)) view.head = kEveryHead;
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("One small map per query head of the layer");
    for (uint32_t h = 0; h < n_head; ++h)
      if (ImGui::Selectable(fmt::format("head {}", h).c_str(), static_cast<int>(h) == view.head)) view.head = h;
    ImGui::EndCombo();
  }
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("One query head, the mean over all heads, or every head side by side");
  ImGui::SameLine();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 6);
  ImGui::SliderFloat("##gamma", &view.gamma, 0.15f, 1.0f, "power %.2f");
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Colour = probability ^ power: lower shows small probabilities");
  // The zoom buttons move to the next line when the panel is too narrow.
  const ImGuiStyle& style = ImGui::GetStyle();
  const float zoom_width = ImGui::CalcTextSize("+-fitheld").x + 6 * style.FramePadding.x + 5 * style.ItemSpacing.x +
                           ImGui::GetFrameHeight() + ImGui::GetFontSize() * 2;
  ImGui::SameLine();
  if (ImGui::GetContentRegionAvail().x < zoom_width) ImGui::NewLine();
  if (ImGui::SmallButton("+")) view.zoom = std::min(64.0f, view.zoom * 2), view.follow = true;
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Zoom in on positions (or the mouse wheel over the map)");
  ImGui::SameLine();
  if (ImGui::SmallButton("-")) view.zoom = std::max(1.0f, view.zoom / 2);
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Zoom out");
  ImGui::SameLine();
  if (ImGui::SmallButton("fit")) view.zoom = 1, view.first = 0, view.follow = false;
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Every position");
  ImGui::SameLine();
  if (ImGui::Checkbox("held", &view.held_only)) view.held_auto = false;
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Columns: only the positions the cache holds now (not every position of the context).\n"
                      "On by itself once the context is four times what the cache holds, until you choose.");
  if (view.zoom > 1) {
    ImGui::SameLine();
    ImGui::TextColored(colour::muted, "x%.0f", view.zoom);
  }
  view.layer = std::clamp(view.layer, 0, std::max(0, n_layer - 1));
  if (view.head >= static_cast<int>(n_head) || view.head < kEveryHead) view.head = -1;

  const float width = ImGui::GetContentRegionAvail().x;
  const float height = std::max(120.0f, ImGui::GetContentRegionAvail().y - ImGui::GetTextLineHeight() * 2 - 24);
  const ImVec2 p = ImGui::GetCursorScreenPos();
  view.last_rect = {p.x, p.y, width, height};
  ImDrawList* draw = ImGui::GetWindowDrawList();
  draw->AddRectFilled(p, {p.x + width, p.y + height}, u32(colour::bar_bg), 4);

  const std::vector<const ProbeRow*> rows = rows_of_layer(s, view.layer);
  if (rows.empty()) {
    const char* note = !s.probes_supported
                           ? "This build does not read attention back from the device yet."
                           : s.probes.empty() ? "Attention rows appear here while a reply is written:\n"
                                                "rows are decode steps, columns token positions."
                                              : "No rows for this layer yet.";
    const ImVec2 size = ImGui::CalcTextSize(note);
    draw->AddText({p.x + (width - size.x) / 2, p.y + (height - size.y) / 2}, u32(colour::muted), note);
    ImGui::Dummy({width, height});
    draw_legend(view.gamma, width);
    return;
  }
  // Until the person chooses: every position while most are held, the held
  // ones once they are a sliver of the context (a 256-slot cache at 32K).
  if (view.held_auto) view.held_only = rows.back()->n_pos > 4 * std::max<size_t>(1, rows.back()->positions.size());
  if (view.head == kEveryHead) {
    draw_every_head(rows, view, n_head, p, width, height);
    ImGui::InvisibleButton("##heatmap", {width, height});
    view.drew_cells = true;
    draw_legend(view.gamma, width);
    return;
  }
  HeatmapView::Cache& c = view.cache;
  if (c.newest != rows.back() || c.n_rows != rows.size() || c.layer != view.layer || c.head != view.head ||
      c.gamma != view.gamma || c.zoom != view.zoom || c.first != view.first || c.follow != view.follow ||
      c.width != width || c.height != height ||
      c.held_only != view.held_only)
    build_heatmap(c, rows, view, width, height);
  // Drawn relative to the map's corner: scrolling moves it without a rebuild.
  for (const HeatmapView::Run& run : c.runs) {
    const ImVec2 a{p.x + run.x0, p.y + run.y0}, b{p.x + run.x1, p.y + run.y1};
    if (run.level < 0) {
      // Hatched, not just dark: evicted is a different state from "ignored".
      draw->AddRectFilled(a, b, IM_COL32(40, 40, 46, 255));
      const float cell_w = width / std::max(1u, c.n_cells);
      if (cell_w >= 3)
        for (float x = a.x; x + 0.5f < b.x; x += cell_w)
          draw->AddLine({x, b.y}, {std::min(b.x, x + cell_w), a.y}, u32(colour::evicted));
    } else {
      draw->AddRectFilled(a, b, viridis((run.level + 0.5f) / kHeatLevels));
    }
  }
  const uint32_t n_pos = c.n_pos;
  const float cell_w = width / std::max(1u, c.n_cells), cell_h = height / rows.size();
  struct {
    uint32_t first, visible, per_cell, n_cells;
  } l{c.first_col, c.visible, c.per_cell, c.n_cells};
  view.drew_cells = true;
  ImGui::InvisibleButton("##heatmap", {width, height});
  if (ImGui::IsItemHovered()) {
    const ImVec2 m = ImGui::GetIO().MousePos;
    // The wheel zooms around the position under the mouse.
    const float wheel = ImGui::GetIO().MouseWheel;
    const float at = l.first + (m.x - p.x) / width * l.visible;
    if (wheel != 0) {
      view.zoom = std::clamp(view.zoom * (wheel > 0 ? 1.25f : 0.8f), 1.0f, 64.0f);
      view.first = at - (m.x - p.x) / width * (n_pos / view.zoom);
      // Zoomed at the right edge, the view keeps the newest positions in view.
      view.follow = view.zoom > 1 && view.first + n_pos / view.zoom >= n_pos - 1;
    }
    const size_t ri = std::min(rows.size() - 1, static_cast<size_t>((m.y - p.y) / cell_h));
    const uint32_t col = l.first + static_cast<uint32_t>((m.x - p.x) / cell_w) * l.per_cell;
    const uint32_t pos = c.columns.empty() ? col : c.columns[std::min<size_t>(col, c.columns.size() - 1)];
    const ProbeRow& r = *rows[ri];
    ImGui::BeginTooltip();
    ImGui::Text("step %u (query at position %u)", r.step, r.step);
    if (pos < r.n_pos && pos <= r.step) {
      ImGui::PushFont(fonts.tokens);
      ImGui::Text("key position %u  \"%s\"", pos, pos < s.pieces.size() ? s.pieces[pos].c_str() : "?");
      if (l.per_cell > 1) ImGui::TextColored(colour::muted, "(a cell holds %u positions: their largest)", l.per_cell);
      ImGui::PopFont();
      const int32_t slot = r.slot_of(pos);
      if (slot < 0)
        ImGui::TextColored(colour::evicted, "state: evicted (not in the cache at this step)");
      else
        ImGui::Text("probability %.4f  ·  slot %d  ·  state: %s", probability(r, view.head, pos), slot,
                    s.pins.contains(static_cast<int32_t>(pos)) ? "pinned" : "held");
    }
    ImGui::TextColored(colour::muted, "wheel: zoom  ·  right-click: export");
    ImGui::EndTooltip();
  }
  draw_legend(view.gamma, width);
}

}  // namespace kvscope::gui
