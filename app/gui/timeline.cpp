// The eviction map (positions held per step, for one layer and kv head),
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

namespace {

constexpr uint32_t kOpen = UINT32_MAX;

// Reads the log's events not yet read into the map's spans (from the log's
// base when it folded events the map never saw).
void update_map(EvictionMap& m, const kv::EventLog& log, int layer, int head) {
  const kv::TraceHeader& h = log.header();
  if (m.layer != layer || m.head != head || log.recorded_events() < m.processed) m = EvictionMap{layer, head};
  if (m.processed < log.folded_events()) {
    m = EvictionMap{layer, head};
    m.from_base = true;
    m.first_step = log.base_step();
    const size_t t = size_t(layer) * h.n_kv_head + head;
    if (t < log.base().size())
      for (int32_t position : log.base()[t].positions()) {
        if (position < 0) continue;
        if (static_cast<size_t>(position) >= m.spans.size()) m.spans.resize(position + 1);
        m.spans[position].push_back({m.first_step, kOpen});
      }
    m.processed = log.folded_events();
  }
  auto grow = [&](int32_t position) {
    if (position < 0) return false;
    if (static_cast<size_t>(position) >= m.spans.size()) m.spans.resize(position + 1);
    return true;
  };
  auto close = [&](int32_t position, uint32_t step) {
    if (!grow(position) || m.spans[position].empty()) return;
    auto& last = m.spans[position].back();
    if (last.second == kOpen) last.second = std::max(step, last.first);
  };
  const auto& events = log.events();
  for (size_t i = m.processed - log.folded_events(); i < events.size(); ++i) {
    const kv::TraceEvent& event = events[i];
    m.last_step = std::max<int64_t>(m.last_step, event_step(event));
    if (const auto* w = std::get_if<kv::TokensWritten>(&event)) {
      for (int32_t position : w->positions)
        if (grow(position)) {
          close(position, w->step);
          m.spans[position].push_back({w->step, kOpen});
        }
    } else if (const auto* r = std::get_if<kv::RecallEvent>(&event)) {
      if (static_cast<int>(r->layer) == layer && static_cast<int>(r->kv_head) == head && grow(r->position)) {
        m.spans[r->position].push_back({r->step, kOpen});
        if (m.recalls.size() < m.spans.size()) m.recalls.resize(m.spans.size());
        m.recalls[r->position]++;
      }
    } else if (const auto* e = std::get_if<kv::EvictionEvent>(&event)) {
      if (static_cast<int>(e->layer) == layer && static_cast<int>(e->kv_head) == head) close(e->position, e->step);
    } else if (const auto* t = std::get_if<kv::Truncation>(&event)) {
      for (size_t position = std::max(0, t->position); position < m.spans.size(); ++position)
        close(static_cast<int32_t>(position), t->step);
    }
  }
  m.processed = log.recorded_events();
}

// Pixels: `cols` steps bins across, `rows` position bins down; each cell's
// shade is the share of its written positions still held.
void raster(EvictionMap& m, int cols, int rows, uint32_t steps) {
  const uint32_t n_pos = static_cast<uint32_t>(m.spans.size());
  m.cols = cols = std::max(1, std::min<int>(cols, static_cast<int>(steps)));
  m.rows = rows = std::max(1, std::min<int>(rows, static_cast<int>(std::max(1u, n_pos))));
  m.raster_steps = steps;
  m.raster_positions = n_pos;
  std::vector<int32_t> held(size_t(rows) * (cols + 1), 0), written(size_t(rows) * (cols + 1), 0);
  auto col_of = [&](uint32_t step) { return static_cast<int>(uint64_t(std::min(step, steps)) * cols / steps); };
  for (uint32_t p = 0; p < n_pos; ++p) {
    const auto& spans = m.spans[p];
    if (spans.empty()) continue;
    const size_t row = size_t(uint64_t(p) * rows / n_pos) * (cols + 1);
    written[row + col_of(spans.front().first)]++;
    written[row + cols]--;
    for (const auto& [start, end] : spans) {
      const int c0 = col_of(start);
      const int c1 = end == kOpen ? cols : std::max(c0 + 1, col_of(end));
      held[row + c0]++;
      held[row + std::min(c1, cols)]--;
    }
  }
  m.runs.clear();
  m.held.assign(size_t(rows) * cols, 0);
  m.written.assign(size_t(rows) * cols, 0);
  for (int r = 0; r < rows; ++r) {
    int32_t h = 0, w = 0;
    int run_start = -1, run_level = -1;
    for (int c = 0; c <= cols; ++c) {
      int level = -1;
      if (c < cols) {
        h += held[size_t(r) * (cols + 1) + c];
        w += written[size_t(r) * (cols + 1) + c];
        m.held[size_t(r) * cols + c] = static_cast<uint32_t>(std::max(0, h));
        m.written[size_t(r) * cols + c] = static_cast<uint32_t>(std::max(0, w));
        if (w > 0) level = static_cast<int>(std::lround(4.0 * std::clamp(h, 0, w) / w));
      }
      if (level != run_level) {
        if (run_level >= 0)
          m.runs.push_back({static_cast<uint16_t>(run_start), static_cast<uint16_t>(c), static_cast<uint16_t>(r),
                            static_cast<uint8_t>(run_level)});
        run_start = c;
        run_level = level;
      }
    }
  }
}

}  // namespace

void draw_timeline(const SessionSnapshot& s, TimelineView& view) {
  if (!s.log) {
    ImGui::TextColored(colour::muted, "No eviction policy: nothing is evicted. Add a session with one,\n"
                                      "e.g. \"f16 + h2o:budget=64\", to see evictions over time.");
    return;
  }
  const kv::EventLog& log = *s.log;
  const int steps = last_step(log) + 1;
  const uint32_t n_layer = log.header().n_layer, n_head = std::max(1u, log.header().n_kv_head);
  if (steps <= 0 || n_layer == 0) {
    ImGui::TextColored(colour::muted, "Nothing written yet.");
    return;
  }
  view.map_layer = std::clamp(view.map_layer, 0, static_cast<int>(n_layer) - 1);
  view.map_head = std::clamp(view.map_head, 0, static_cast<int>(n_head) - 1);
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * (s.global_layers < s.layers.size() ? 8.5f : 6.0f));
  if (ImGui::BeginCombo("##map_layer", layer_name(s, view.map_layer).c_str())) {
    for (uint32_t l = 0; l < n_layer; ++l)
      if (ImGui::Selectable(layer_name(s, static_cast<int>(l)).c_str(), static_cast<int>(l) == view.map_layer))
        view.map_layer = static_cast<int>(l);
    ImGui::EndCombo();
  }
  layer_picker_tooltip(s, view.map_layer, "Which layer's slots the map shows");
  ImGui::SameLine();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 6.5f);
  if (ImGui::BeginCombo("##map_head", fmt::format("kv head {}", view.map_head).c_str())) {
    for (uint32_t h = 0; h < n_head; ++h)
      if (ImGui::Selectable(fmt::format("kv head {}", h).c_str(), static_cast<int>(h) == view.map_head))
        view.map_head = static_cast<int>(h);
    ImGui::EndCombo();
  }
  EvictionMap& m = view.map;
  update_map(m, log, view.map_layer, view.map_head);

  ImDrawList* draw = ImGui::GetWindowDrawList();
  const float width = ImGui::GetContentRegionAvail().x;
  const float height = std::clamp(ImGui::GetContentRegionAvail().y * 0.3f, 60.0f, 140.0f);
  const ImVec2 p = ImGui::GetCursorScreenPos();
  // Rastered again when the log grew (at most 5 times a second) or the panel changed size.
  const double now = ImGui::GetTime();
  const int cols = static_cast<int>(width), rows = static_cast<int>(height);
  const bool resized = cols != m.cols && static_cast<uint32_t>(cols) < static_cast<uint32_t>(steps);
  if (m.raster_events == UINT64_MAX || resized || (m.raster_events != m.processed && now - m.raster_time > 0.2)) {
    raster(m, cols, rows, static_cast<uint32_t>(steps));
    m.raster_events = m.processed;
    m.raster_time = now;
  }
  draw->AddRectFilled(p, {p.x + width, p.y + height}, u32(colour::bar_bg), 2);
  const float cw = width / m.cols, rh = height / m.rows;
  for (const EvictionMap::Run& r : m.runs) {
    const float t = r.level / 4.0f;
    const ImVec4 c = r.level == 0 ? ImVec4{colour::diverged.x, colour::diverged.y, colour::diverged.z, 0.55f}
                                  : ImVec4{colour::bar_fill.x, colour::bar_fill.y, colour::bar_fill.z, 0.35f + 0.65f * t};
    draw->AddRectFilled({p.x + r.x0 * cw, p.y + r.row * rh}, {p.x + r.x1 * cw, p.y + (r.row + 1) * rh}, u32(c));
  }
  const float step_w = width / std::max<uint32_t>(1, m.raster_steps);
  if (view.step >= 0) {
    const float x = p.x + (std::min(view.step, steps - 1) + 0.5f) * step_w;
    draw->AddLine({x, p.y - 2}, {x, p.y + height + 2}, u32(colour::text), 2);
  }
  if (m.from_base) {
    const float x = p.x + m.first_step * step_w;
    draw->AddLine({x, p.y}, {x, p.y + height}, u32(colour::muted), 1);
  }
  view.map_rect = {p.x, p.y, width, height};
  ImGui::InvisibleButton("##timeline", {width, height});
  if (ImGui::IsItemActive()) {  // click or drag on the map scrubs
    const float mx = ImGui::GetIO().MousePos.x;
    view.step = std::clamp(static_cast<int>((mx - p.x) / step_w), static_cast<int>(m.first_step), steps - 1);
  }
  if (ImGui::IsItemHovered() && m.rows > 0 && m.cols > 0) {
    const ImVec2 mouse = ImGui::GetIO().MousePos;
    const int c = std::clamp(static_cast<int>((mouse.x - p.x) / cw), 0, m.cols - 1);
    const int r = std::clamp(static_cast<int>((mouse.y - p.y) / rh), 0, m.rows - 1);
    const uint32_t s0 = static_cast<uint32_t>(uint64_t(c) * m.raster_steps / m.cols);
    const uint32_t s1 = std::max(s0 + 1, static_cast<uint32_t>(uint64_t(c + 1) * m.raster_steps / m.cols));
    const uint32_t p0 = static_cast<uint32_t>(uint64_t(r) * m.raster_positions / m.rows);
    const uint32_t p1 = std::max(p0 + 1, static_cast<uint32_t>(uint64_t(r + 1) * m.raster_positions / m.rows));
    uint32_t recalled = 0;
    for (uint32_t q = p0; q < p1 && q < m.recalls.size(); ++q) recalled += m.recalls[q];
    ImGui::SetTooltip("steps %u-%u, positions %u-%u (layer %d, kv head %d):\n%u of the %u written held%s\n"
                      "click or drag to see the cache at a step",
                      s0, s1 - 1, p0, p1 - 1, view.map_layer, view.map_head, m.held[size_t(r) * m.cols + c],
                      m.written[size_t(r) * m.cols + c],
                      recalled ? fmt::format(", {} recalls", recalled).c_str() : "");
  }
  bool live = view.step < 0;
  if (ImGui::Checkbox("live", &live)) view.step = live ? -1 : steps - 1;
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Follow the newest step; untick to scrub back");
  ImGui::SameLine();
  int step = view.step < 0 ? steps - 1 : view.step;
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x);
  if (ImGui::SliderInt("##step", &step, static_cast<int>(log.base_step()), steps - 1,
                       view.step < 0 ? "step %d (live)" : "step %d"))
    view.step = step;
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("The token strip and the occupancy show the cache as it was after this step");
  ImGui::TextColored(colour::muted, "%llu evictions over %d steps  ·  %s%s",
                     static_cast<unsigned long long>(log.eviction_count()), steps, log.header().policy.c_str(),
                     m.from_base ? fmt::format("  ·  history from step {}", m.first_step).c_str() : "");
}

}  // namespace kvscope::gui
