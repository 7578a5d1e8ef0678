// [SECTION] numbers
// [SECTION] occupancy
// [SECTION] token flow and strip
// [SECTION] attention heatmap
#include "app/gui/inspector.h"

#include <fmt/format.h>

#include <algorithm>
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

// A horizontal bar of `fraction` with `label` drawn over it.
void bar(float fraction, float width, float height, const std::string& label) {
  ImDrawList* draw = ImGui::GetWindowDrawList();
  const ImVec2 p = ImGui::GetCursorScreenPos();
  draw->AddRectFilled(p, {p.x + width, p.y + height}, u32(colour::bar_bg), 3);
  const float filled = std::clamp(fraction, 0.0f, 1.0f) * width;
  if (filled > 0) draw->AddRectFilled(p, {p.x + filled, p.y + height}, u32(colour::bar_fill), 3);
  const ImVec2 text = ImGui::CalcTextSize(label.c_str());
  draw->AddText({p.x + 6, p.y + (height - text.y) * 0.5f}, u32(colour::text), label.c_str());
  ImGui::Dummy({width, height});
}

}  // namespace

// ================================================================= occupancy

void draw_occupancy(const SessionSnapshot& s) {
  const std::string format = s.spec.name();
  const double layer_bytes_per_slot = s.layers.empty() ? 0 : s.bytes_per_token / s.layers.size();
  const float label_w = ImGui::CalcTextSize("L00").x + 8;
  const float height = ImGui::GetTextLineHeight() + 4;
  const float width = ImGui::GetContentRegionAvail().x - label_w;
  for (size_t layer = 0; layer < s.layers.size(); ++layer) {
    const LayerOccupancy& o = s.layers[layer];
    ImGui::AlignTextToFramePadding();
    ImGui::TextColored(colour::muted, "L%zu", layer);
    ImGui::SameLine(label_w);
    const std::string live = o.live_min == o.live_max ? fmt::format("{}", o.live_max)
                                                      : fmt::format("{}-{}", o.live_min, o.live_max);
    const std::string label = fmt::format("{} / {} slots  ·  {}  ·  {}", live, o.capacity, format,
                                          format_bytes(layer_bytes_per_slot * o.live_max));
    bar(o.capacity ? static_cast<float>(o.live_max) / o.capacity : 0, width, height, label);
    if (ImGui::IsItemHovered())
      ImGui::SetTooltip("Layer %zu: %s of its %u slots per kv head hold a token (%u kv heads).\n"
                        "Storage %s: %.0f bytes per token in this layer.",
                        layer, live.c_str(), o.capacity, s.n_kv_head, format.c_str(), layer_bytes_per_slot);
  }
  if (s.layers.empty()) ImGui::TextColored(colour::muted, "No cache yet.");
  const double used = s.bytes_per_token * s.used_tokens;
  ImGui::TextColored(colour::muted, "Total %s of %s (%s), %.0f bytes per token", format_bytes(used).c_str(),
                     format_bytes(static_cast<double>(s.cache_bytes_full)).c_str(), format.c_str(),
                     s.bytes_per_token);
}

// ======================================================== token flow and strip

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
  float x = 0, y = 0;
  int hovered = -1;
  for (size_t i = begin; i < end && i < pieces.size(); ++i) {
    const std::string& text = pieces[i];
    const float w = ImGui::CalcTextSize(text.c_str()).x + 2;
    if (x > 0 && x + w > width) x = 0, y += line_h;
    const ImVec2 a{origin.x + x, origin.y + y}, b{a.x + w, a.y + line_h - 1};
    const TokenStyle st = style ? style(i) : TokenStyle{};
    // A faint chip per token shows where one token ends and the next begins.
    draw->AddRectFilled(a, b, st.background ? st.background : IM_COL32(255, 255, 255, 14), 3);
    draw->AddText({a.x + 1, a.y + 2}, u32(st.colour), text.c_str());
    if (st.struck) {
      const float mid = a.y + line_h * 0.5f;
      draw->AddLine({a.x, mid}, {b.x, mid}, u32(st.colour), 1.2f);
    }
    if (st.underline) draw->AddLine({a.x, b.y - 1}, {b.x, b.y - 1}, u32(colour::pinned), 2.0f);
    if (window_hovered && mouse.x >= a.x && mouse.x < b.x && mouse.y >= a.y && mouse.y < b.y) {
      hovered = static_cast<int>(i);
      draw->AddRect(a, b, u32(colour::text), 3);
    }
    x += w + gap;
  }
  ImGui::PopFont();
  ImGui::Dummy({width, y + line_h});
  if (hovered >= 0 && tooltip) {
    ImGui::BeginTooltip();
    tooltip(static_cast<size_t>(hovered));
    ImGui::EndTooltip();
  }
  return hovered;
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
  const size_t n_layer = std::max<size_t>(1, s.layers.size());
  auto held = [&](size_t i) -> size_t { return i < s.layers_holding.size() ? s.layers_holding[i] : 0; };
  auto pending = [&](size_t i) { return i >= s.written_positions; };
  auto is_regretted = [&](size_t i) {
    return std::find(regretted.begin(), regretted.end(), static_cast<int32_t>(i)) != regretted.end();
  };
  const int lo = std::min(drag.anchor, drag.current), hi = std::max(drag.anchor, drag.current);
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
          ImGui::TextColored(held(i) ? colour::text : colour::evicted, "held by %zu of %zu layers%s", held(i), n_layer,
                             at_step >= 0 ? fmt::format(" at step {}", at_step).c_str() : "");
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

float probability(const ProbeRow& r, int head, uint32_t position) {
  if (position >= r.n_pos) return 0;
  if (head >= 0) return r.probs[size_t(head) * r.n_pos + position];
  float sum = 0;
  for (uint32_t h = 0; h < r.n_head; ++h) sum += r.probs[size_t(h) * r.n_pos + position];
  return sum / std::max(1u, r.n_head);
}

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
  l.first = std::min(static_cast<uint32_t>(std::max(0.0f, view.first)), n_pos > l.visible ? n_pos - l.visible : 0);
  l.per_cell = std::max(1u, static_cast<uint32_t>(std::ceil(l.visible / std::max(1.0f, width / 2))));
  l.n_cells = (l.visible + l.per_cell - 1) / l.per_cell;
  return l;
}

// The largest probability of the held positions in [p0, p1) at row r, or
// -1 when none is held (evicted), -2 when none existed yet.
float cell_value(const ProbeRow& r, int head, uint32_t p0, uint32_t p1) {
  float prob = -2;
  for (uint32_t pos = p0; pos < p1 && pos <= r.step && pos < r.n_pos; ++pos) {
    if (prob < -1) prob = -1;
    if (pos < r.slot_of_position.size() && r.slot_of_position[pos] < 0) continue;
    prob = std::max(prob, probability(r, head, pos));
  }
  return prob;
}

}  // namespace

std::vector<uint8_t> heatmap_pixels(const SessionSnapshot& s, const HeatmapView& view, int width, int height) {
  const std::vector<const ProbeRow*> rows = rows_of_layer(s, view.layer);
  if (rows.empty() || width <= 0 || height <= 0) return {};
  uint32_t n_pos = 0;
  for (const ProbeRow* r : rows) n_pos = std::max(n_pos, r->n_pos);
  const HeatmapLayout l = heatmap_layout(n_pos, view, static_cast<float>(width));
  std::vector<uint8_t> rgba(size_t(width) * height * 4);
  const ImVec4 bg = colour::bar_bg;
  for (int y = 0; y < height; ++y) {
    const ProbeRow& r = *rows[std::min(rows.size() - 1, size_t(y) * rows.size() / height)];
    for (int x = 0; x < width; ++x) {
      const uint32_t cell = static_cast<uint32_t>(uint64_t(x) * l.n_cells / width);
      const uint32_t p0 = l.first + cell * l.per_cell;
      const float v = cell_value(r, view.head, p0, std::min(p0 + l.per_cell, l.first + l.visible));
      ImU32 c = v < -1 ? ImGui::ColorConvertFloat4ToU32(bg)
                : v < 0 ? ((x + y) % 6 < 2 ? u32(colour::evicted) : IM_COL32(40, 40, 46, 255))  // hatched
                        : viridis(std::pow(v, view.gamma));
      uint8_t* px = &rgba[(size_t(y) * width + x) * 4];
      px[0] = c & 0xFF, px[1] = (c >> 8) & 0xFF, px[2] = (c >> 16) & 0xFF, px[3] = 255;
    }
  }
  return rgba;
}

void draw_heatmap(const SessionSnapshot& s, HeatmapView& view, const Fonts& fonts) {
  const int n_layer = static_cast<int>(s.layers.size());
  view.drew_cells = false;
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 6);
  const std::string layer_label = fmt::format("layer {}", view.layer);
  if (ImGui::BeginCombo("##layer", layer_label.c_str())) {
    for (int l = 0; l < n_layer; ++l)
      if (ImGui::Selectable(fmt::format("layer {}", l).c_str(), l == view.layer)) view.layer = l;
    ImGui::EndCombo();
  }
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Which layer's attention to show");
  const uint32_t n_head = s.probes.empty() ? 0 : s.probes.back()->n_head;
  ImGui::SameLine();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 8.5f);
  const std::string head_label = view.head < 0 ? "mean of heads" : fmt::format("head {}", view.head);
  if (ImGui::BeginCombo("##head", head_label.c_str())) {
    if (ImGui::Selectable("mean of heads", view.head < 0)) view.head = -1;
    for (uint32_t h = 0; h < n_head; ++h)
      if (ImGui::Selectable(fmt::format("head {}", h).c_str(), static_cast<int>(h) == view.head)) view.head = h;
    ImGui::EndCombo();
  }
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("One query head, or the mean over all heads");
  ImGui::SameLine();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 6);
  ImGui::SliderFloat("##gamma", &view.gamma, 0.15f, 1.0f, "power %.2f");
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Colour = probability ^ power: lower shows small probabilities");
  // The zoom buttons move to the next line when the panel is too narrow.
  const ImGuiStyle& style = ImGui::GetStyle();
  const float zoom_width = ImGui::CalcTextSize("+-fit").x + 6 * style.FramePadding.x + 3 * style.ItemSpacing.x;
  ImGui::SameLine();
  if (ImGui::GetContentRegionAvail().x < zoom_width) ImGui::NewLine();
  if (ImGui::SmallButton("+")) view.zoom = std::min(64.0f, view.zoom * 2);
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Zoom in on positions (or the mouse wheel over the map)");
  ImGui::SameLine();
  if (ImGui::SmallButton("-")) view.zoom = std::max(1.0f, view.zoom / 2);
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Zoom out");
  ImGui::SameLine();
  if (ImGui::SmallButton("fit")) view.zoom = 1, view.first = 0;
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Every position");
  if (view.zoom > 1) {
    ImGui::SameLine();
    ImGui::TextColored(colour::muted, "x%.0f", view.zoom);
  }
  view.layer = std::clamp(view.layer, 0, std::max(0, n_layer - 1));
  if (view.head >= static_cast<int>(n_head)) view.head = -1;

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
  uint32_t n_pos = 0;
  for (const ProbeRow* r : rows) n_pos = std::max(n_pos, r->n_pos);
  const HeatmapLayout l = heatmap_layout(n_pos, view, width);
  const float cell_w = width / std::max(1u, l.n_cells), cell_h = height / rows.size();
  // Colours are quantized to kLevels steps and runs of equal cells drawn as
  // one rectangle: on a CPU device every quad costs frame time, which
  // decoding on the same cores pays for.
  constexpr int kLevels = 48;
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    const ProbeRow& r = *rows[ri];
    const float y0 = p.y + ri * cell_h, y1 = y0 + std::max(1.0f, cell_h - (cell_h > 4 ? 1 : 0));
    int run_level = -2;  // -1: evicted
    uint32_t run_start = 0;
    auto flush = [&](uint32_t end) {
      if (run_level == -2 || end == run_start) return;
      const float x0 = p.x + run_start * cell_w, x1 = p.x + end * cell_w + (cell_w < 1 ? 1 : 0);
      if (run_level < 0) {
        // Hatched, not just dark: evicted is a different state from "ignored".
        draw->AddRectFilled({x0, y0}, {x1, y1}, IM_COL32(40, 40, 46, 255));
        if (cell_w >= 3)
          for (uint32_t c = run_start; c < end; ++c)
            draw->AddLine({p.x + c * cell_w, y1}, {p.x + (c + 1) * cell_w, y0}, u32(colour::evicted));
      } else {
        draw->AddRectFilled({x0, y0}, {x1, y1}, viridis((run_level + 0.5f) / kLevels));
      }
    };
    uint32_t cell = 0;
    for (; cell < l.n_cells; ++cell) {
      const uint32_t p0 = l.first + cell * l.per_cell;
      const float v = cell_value(r, view.head, p0, std::min(p0 + l.per_cell, l.first + l.visible));
      if (v < -1) break;  // later positions did not exist at this step
      const int level = v < 0 ? -1 : std::min(kLevels - 1, static_cast<int>(std::pow(v, view.gamma) * kLevels));
      if (level != run_level) {
        flush(cell);
        run_level = level;
        run_start = cell;
      }
    }
    flush(cell);
  }
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
    }
    const size_t ri = std::min(rows.size() - 1, static_cast<size_t>((m.y - p.y) / cell_h));
    const uint32_t pos = l.first + static_cast<uint32_t>((m.x - p.x) / cell_w) * l.per_cell;
    const ProbeRow& r = *rows[ri];
    ImGui::BeginTooltip();
    ImGui::Text("step %u (query at position %u)", r.step, r.step);
    if (pos < r.n_pos && pos <= r.step) {
      ImGui::PushFont(fonts.tokens);
      ImGui::Text("key position %u  \"%s\"", pos, pos < s.pieces.size() ? s.pieces[pos].c_str() : "?");
      if (l.per_cell > 1) ImGui::TextColored(colour::muted, "(a cell holds %u positions: their largest)", l.per_cell);
      ImGui::PopFont();
      const int32_t slot = pos < r.slot_of_position.size() ? r.slot_of_position[pos] : -1;
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
