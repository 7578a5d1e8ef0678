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

void draw_token_strip(const SessionSnapshot& s, const Fonts& fonts) {
  const size_t n_layer = std::max<size_t>(1, s.layers.size());
  auto held = [&](size_t i) -> size_t { return i < s.layers_holding.size() ? s.layers_holding[i] : 0; };
  auto pending = [&](size_t i) { return i >= s.written_positions; };
  draw_token_flow(
      s.pieces, 0, s.pieces.size(), fonts.tokens,
      [&](size_t i) {
        TokenStyle st;
        if (pending(i)) return st;
        const size_t h = held(i);
        if (h == 0) {
          st.colour = colour::evicted;
          st.struck = true;
        } else if (h < n_layer) {
          // Partly evicted: the fewer layers hold it, the dimmer.
          const float f = 0.45f + 0.55f * static_cast<float>(h) / n_layer;
          st.colour = {colour::text.x * f, colour::text.y * f, colour::text.z * f, 1};
        }
        return st;
      },
      [&](size_t i) {
        ImGui::Text("position %zu: \"%s\" (id %d)", i, s.pieces[i].c_str(), i < s.tokens.size() ? s.tokens[i] : -1);
        if (pending(i))
          ImGui::TextColored(colour::muted, "sampled; written to the cache with the next step");
        else
          ImGui::TextColored(held(i) ? colour::text : colour::evicted, "held by %zu of %zu layers", held(i), n_layer);
        ImGui::Separator();
        ImGui::TextColored(colour::muted, "Legend: normal = kept,");
        ImGui::SameLine();
        ImGui::TextColored(colour::evicted, "dim struck = evicted");
      });
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

}  // namespace

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
  // Long contexts: several positions per cell (their largest probability),
  // so a cell is at least 2 pixels wide and the frame stays cheap.
  const uint32_t per_cell = std::max(1u, static_cast<uint32_t>(std::ceil(n_pos / std::max(1.0f, width / 2))));
  const uint32_t n_cells = (n_pos + per_cell - 1) / per_cell;
  const float cell_w = width / std::max(1u, n_cells), cell_h = height / rows.size();
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    const ProbeRow& r = *rows[ri];
    const float y0 = p.y + ri * cell_h, y1 = y0 + std::max(1.0f, cell_h - (cell_h > 4 ? 1 : 0));
    for (uint32_t cell = 0; cell * per_cell <= r.step && cell * per_cell < r.n_pos; ++cell) {
      const float x0 = p.x + cell * cell_w, x1 = x0 + std::max(1.0f, cell_w);
      float prob = 0;
      bool any_held = false;
      for (uint32_t pos = cell * per_cell; pos < (cell + 1) * per_cell && pos <= r.step && pos < r.n_pos; ++pos) {
        if (pos < r.slot_of_position.size() && r.slot_of_position[pos] < 0) continue;
        any_held = true;
        prob = std::max(prob, probability(r, view.head, pos));
      }
      if (!any_held) {
        // Hatched, not just dark: evicted is a different state from "ignored".
        draw->AddRectFilled({x0, y0}, {x1, y1}, IM_COL32(40, 40, 46, 255));
        if (cell_w >= 3) draw->AddLine({x0, y1}, {x1, y0}, u32(colour::evicted));
        continue;
      }
      draw->AddRectFilled({x0, y0}, {x1, y1}, viridis(std::pow(prob, view.gamma)));
    }
  }
  view.drew_cells = true;
  ImGui::InvisibleButton("##heatmap", {width, height});
  if (ImGui::IsItemHovered()) {
    const ImVec2 m = ImGui::GetIO().MousePos;
    const size_t ri = std::min(rows.size() - 1, static_cast<size_t>((m.y - p.y) / cell_h));
    const uint32_t pos = static_cast<uint32_t>((m.x - p.x) / cell_w) * per_cell;
    const ProbeRow& r = *rows[ri];
    ImGui::BeginTooltip();
    ImGui::Text("step %u (query at position %u)", r.step, r.step);
    if (pos < r.n_pos && pos <= r.step) {
      ImGui::PushFont(fonts.tokens);
      ImGui::Text("key position %u  \"%s\"", pos, pos < s.pieces.size() ? s.pieces[pos].c_str() : "?");
      if (per_cell > 1) ImGui::TextColored(colour::muted, "(a cell holds %u positions: their largest)", per_cell);
      ImGui::PopFont();
      const int32_t slot = pos < r.slot_of_position.size() ? r.slot_of_position[pos] : -1;
      if (slot < 0)
        ImGui::TextColored(colour::evicted, "evicted: not in the cache at this step");
      else
        ImGui::Text("probability %.4f  ·  slot %d", probability(r, view.head, pos), slot);
    }
    ImGui::EndTooltip();
  }
  draw_legend(view.gamma, width);
}

}  // namespace kvscope::gui
