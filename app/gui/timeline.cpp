// The eviction timeline: evictions (and recalls) per decode step per layer,
// drawn from the session's eviction log, with a scrubber; and the cache as
// it was at the scrubbed step, rebuilt by replaying the log up to it.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "app/gui/inspector.h"

namespace kvscope::gui {

namespace {

ImU32 u32(const ImVec4& c) { return ImGui::ColorConvertFloat4ToU32(c); }

uint32_t event_step(const kv::TraceEvent& event) {
  return std::visit([](const auto& e) { return e.step; }, event);
}

}  // namespace

int last_step(const kv::EventLog& log) { return static_cast<int>(log.last_step()); }

const SessionSnapshot& scrubbed(const SessionSnapshot& s, TimelineView& view) {
  if (view.step < 0 || !s.log) return s;
  if (view.log_id == s.log.get() && view.log_events == s.log->recorded_events() && view.replayed_step == view.step &&
      view.at_step.version == s.version)
    return view.at_step;
  view.at_step = s;
  view.log_id = s.log.get();
  view.log_events = s.log->recorded_events();
  view.replayed_step = view.step;
  const kv::TraceHeader& header = s.log->header();
  std::vector<kv::SlotTable> tables;
  try {
    tables = kv::replay(s.log->until(static_cast<uint32_t>(std::max(view.step, 0))));
  } catch (const std::exception&) {
    return s;  // a log that does not replay shows the live state (the tests check replays)
  }
  SessionSnapshot& at = view.at_step;
  at.layers.assign(header.n_layer, {});
  at.layers_holding.assign(s.tokens.size(), 0);
  at.written_positions = 0;
  for (uint32_t layer = 0; layer < header.n_layer; ++layer) {
    LayerOccupancy& o = at.layers[layer];
    o.capacity = header.capacity;
    o.live_min = UINT32_MAX;
    for (uint32_t head = 0; head < header.n_kv_head; ++head) {
      const kv::SlotTable& table = tables[size_t{layer} * header.n_kv_head + head];
      o.live_min = std::min(o.live_min, table.live());
      o.live_max = std::max(o.live_max, table.live());
      if (head != 0) continue;
      for (int32_t position : table.positions()) {
        if (position < 0) continue;
        at.written_positions = std::max(at.written_positions, static_cast<uint32_t>(position) + 1);
        if (static_cast<size_t>(position) < at.layers_holding.size()) at.layers_holding[position]++;
      }
    }
  }
  // Tokens after the step did not exist yet.
  at.pieces.resize(std::min(at.pieces.size(), size_t{at.written_positions}));
  at.used_tokens = at.layers.empty() ? 0 : at.layers[0].live_max;
  return at;
}

void draw_timeline(const SessionSnapshot& s, TimelineView& view) {
  if (!s.log) {
    ImGui::TextColored(colour::muted, "No eviction policy: nothing is evicted. Add a session with one,\n"
                                      "e.g. \"f16 + h2o:budget=64\", to see evictions over time.");
    return;
  }
  const kv::EventLog& log = *s.log;
  const int steps = last_step(log) + 1;
  const uint32_t n_layer = log.header().n_layer;
  if (steps <= 0 || n_layer == 0) {
    ImGui::TextColored(colour::muted, "Nothing written yet.");
    return;
  }
  // Events per (step, layer) over kv heads.
  std::vector<uint32_t> evictions(size_t(steps) * n_layer, 0), recalls(size_t(steps) * n_layer, 0);
  uint32_t most = 1;
  for (const kv::TraceEvent& event : log.events()) {
    const bool recall = std::holds_alternative<kv::RecallEvent>(event);
    const kv::EvictionEvent* e = recall ? &std::get<kv::RecallEvent>(event) : std::get_if<kv::EvictionEvent>(&event);
    if (!e || e->layer >= n_layer) continue;
    uint32_t& count = (recall ? recalls : evictions)[size_t(e->step) * n_layer + e->layer];
    most = std::max(most, ++count);
  }
  ImDrawList* draw = ImGui::GetWindowDrawList();
  const float width = ImGui::GetContentRegionAvail().x;
  const float row_h = std::max(3.0f, std::min(8.0f, 96.0f / n_layer));
  const float height = row_h * n_layer;
  const ImVec2 p = ImGui::GetCursorScreenPos();
  draw->AddRectFilled(p, {p.x + width, p.y + height}, u32(colour::bar_bg), 2);
  const float step_w = width / steps;
  for (int step = 0; step < steps; ++step)
    for (uint32_t layer = 0; layer < n_layer; ++layer) {
      const uint32_t ev = evictions[size_t(step) * n_layer + layer], rc = recalls[size_t(step) * n_layer + layer];
      if (!ev && !rc) continue;
      const float x0 = p.x + step * step_w, x1 = x0 + std::max(1.0f, step_w);
      const float y0 = p.y + layer * row_h, y1 = y0 + row_h - (row_h > 4 ? 1 : 0);
      const ImVec4 base = rc ? colour::recalled : colour::diverged;
      const float a = 0.35f + 0.65f * std::sqrt(static_cast<float>(ev + rc) / most);
      draw->AddRectFilled({x0, y0}, {x1, y1}, u32({base.x, base.y, base.z, a}));
    }
  if (view.step >= 0) {
    const float x = p.x + (std::min(view.step, steps - 1) + 0.5f) * step_w;
    draw->AddLine({x, p.y - 2}, {x, p.y + height + 2}, u32(colour::text), 2);
  }
  ImGui::InvisibleButton("##timeline", {width, height});
  if (ImGui::IsItemActive()) {  // click or drag on the timeline scrubs
    const float mx = ImGui::GetIO().MousePos.x;
    view.step = std::clamp(static_cast<int>((mx - p.x) / step_w), 0, steps - 1);
  }
  if (ImGui::IsItemHovered()) {
    const ImVec2 m = ImGui::GetIO().MousePos;
    const int step = std::clamp(static_cast<int>((m.x - p.x) / step_w), 0, steps - 1);
    const uint32_t layer = std::min(n_layer - 1, static_cast<uint32_t>((m.y - p.y) / row_h));
    ImGui::SetTooltip("step %d, layer %u: %u evicted, %u recalled (over %u kv heads)\nclick or drag to see the cache "
                      "at a step",
                      step, layer, evictions[size_t(step) * n_layer + layer], recalls[size_t(step) * n_layer + layer],
                      log.header().n_kv_head);
  }
  bool live = view.step < 0;
  if (ImGui::Checkbox("live", &live)) view.step = live ? -1 : steps - 1;
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Follow the newest step; untick to scrub back");
  ImGui::SameLine();
  int step = view.step < 0 ? steps - 1 : view.step;
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x);
  if (ImGui::SliderInt("##step", &step, 0, steps - 1, view.step < 0 ? "step %d (live)" : "step %d")) view.step = step;
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("The token strip and the occupancy bars show the cache as it was after this step");
  ImGui::TextColored(colour::muted, "%llu evictions over %d steps  ·  %s", static_cast<unsigned long long>(log.eviction_count()),
                     steps, log.header().policy.c_str());
}

}  // namespace kvscope::gui
