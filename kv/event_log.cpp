#include "kv/event_log.h"

#include <climits>
#include <cmath>
#include <istream>
#include <limits>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace kvscope::kv {

using nlohmann::json;
// Written in insertion order ("kind" first), as the format above reads.
using ordered = nlohmann::ordered_json;

// ------------------------------------------------------------------ recording

void EventLog::written(uint32_t step, std::span<const int32_t> positions, std::span<const int32_t> tokens) {
  TokensWritten w{step, {positions.begin(), positions.end()}, {tokens.begin(), tokens.end()}};
  w.tokens.resize(w.positions.size(), -1);
  events_.emplace_back(std::move(w));
}

void EventLog::evicted(const EvictionEvent& event) {
  events_.emplace_back(event);
  ++evictions_;
}

void EventLog::recalled(const RecallEvent& event) { events_.emplace_back(event); }

void EventLog::truncated(uint32_t step, int32_t position) { events_.emplace_back(Truncation{step, position}); }

void EventLog::occupancy(uint32_t step, std::span<const SlotTable> tables) {
  Occupancy o{step, {}};
  o.live.reserve(tables.size());
  for (const auto& t : tables) o.live.push_back(t.live());
  occupancies_.push_back(std::move(o));
}

void EventLog::clear() {
  events_.clear();
  occupancies_.clear();
  evictions_ = 0;
}

// ---------------------------------------------------------------------- JSONL

namespace {

ordered slot_event_json(std::string_view kind, const EvictionEvent& e) {
  return {{"kind", kind},           {"step", e.step},         {"layer", e.layer},
          {"kv_head", e.kv_head},   {"slot", e.slot},         {"position", e.position},
          {"token", e.token},       {"score", e.score}};
}

uint32_t event_step(const TraceEvent& event) {
  return std::visit([](const auto& e) { return e.step; }, event);
}

}  // namespace

void write_jsonl(const EventLog& log, std::ostream& out) {
  const auto& h = log.header();
  ordered pins = ordered::array();
  for (const auto& p : h.pins) pins.push_back(to_string(p));
  out << ordered{{"kind", "header"},          {"version", 1},         {"policy", h.policy},
              {"n_layer", h.n_layer},      {"n_kv_head", h.n_kv_head}, {"capacity", h.capacity},
              {"block_slots", h.block_slots}, {"pins", pins}}
             .dump()
      << '\n';
  // Events and occupancies merged by step: a step's occupancy follows all
  // of its events, so a reader sees the tables as they were after the step.
  const auto& events = log.events();
  const auto& occupancies = log.occupancies();
  size_t next_occupancy = 0;
  auto flush_occupancies_before = [&](uint64_t step) {
    for (; next_occupancy < occupancies.size() && occupancies[next_occupancy].step < step; ++next_occupancy) {
      const auto& o = occupancies[next_occupancy];
      ordered live = ordered::array();
      for (uint32_t layer = 0; layer < h.n_layer; ++layer) {
        ordered heads = ordered::array();
        for (uint32_t head = 0; head < h.n_kv_head; ++head) {
          const size_t i = size_t{layer} * h.n_kv_head + head;
          heads.push_back(i < o.live.size() ? o.live[i] : 0u);
        }
        live.push_back(std::move(heads));
      }
      out << ordered{{"kind", "occupancy"}, {"step", o.step}, {"live", live}}.dump() << '\n';
    }
  };
  for (const auto& event : events) {
    flush_occupancies_before(event_step(event));
    if (const auto* w = std::get_if<TokensWritten>(&event)) {
      out << ordered{{"kind", "write"}, {"step", w->step}, {"positions", w->positions}, {"tokens", w->tokens}}.dump();
    } else if (const auto* r = std::get_if<RecallEvent>(&event)) {
      out << slot_event_json("recall", *r).dump();
    } else if (const auto* e = std::get_if<EvictionEvent>(&event)) {
      out << slot_event_json("evict", *e).dump();
    } else {
      const auto& t = std::get<Truncation>(event);
      out << ordered{{"kind", "truncate"}, {"step", t.step}, {"position", t.position}}.dump();
    }
    out << '\n';
  }
  flush_occupancies_before(UINT64_MAX);
}

EventLog read_jsonl(std::istream& in, std::string_view source_name) {
  std::string line;
  uint64_t line_no = 0;
  auto fail = [&](const std::string& what) -> std::runtime_error {
    return std::runtime_error(fmt::format("{}:{}: {}", source_name, line_no, what));
  };
  auto field = [&](const json& j, const char* key) -> const json& {
    const auto it = j.find(key);
    if (it == j.end()) throw fail(fmt::format("missing field \"{}\"", key));
    return *it;
  };
  // Numbers must fit the field's type; nlohmann would otherwise wrap them.
  auto u32 = [&](const json& j, const char* key) {
    const auto& v = field(j, key);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT32_MAX) ||
        v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
      throw fail(fmt::format("field \"{}\" must be an integer >= 0", key));
    return v.get<uint32_t>();
  };
  auto i32_value = [&](const json& v, const char* what) {
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT32_MAX) ||
        v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
      throw fail(fmt::format("{} must be a 32-bit integer", what));
    return static_cast<int32_t>(v.get<int64_t>());
  };
  auto i32 = [&](const json& j, const char* key) {
    return i32_value(field(j, key), fmt::format("field \"{}\"", key).c_str());
  };
  auto slot_event = [&](const json& j) {
    EvictionEvent e;
    e.step = u32(j, "step");
    e.layer = u32(j, "layer");
    e.kv_head = u32(j, "kv_head");
    e.slot = u32(j, "slot");
    e.position = i32(j, "position");
    e.token = i32(j, "token");
    const auto& score = field(j, "score");
    // A double beyond float's range would convert with undefined behaviour.
    if (!score.is_number() || !(std::fabs(score.get<double>()) <= std::numeric_limits<float>::max()))
      throw fail("field \"score\" must be a finite number");
    e.score = static_cast<float>(score.get<double>());
    return e;
  };

  std::optional<EventLog> log;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      throw fail(fmt::format("not JSON ({})", e.what()));
    }
    if (!j.is_object()) throw fail("each line must be a JSON object");
    const auto& kind_json = field(j, "kind");
    if (!kind_json.is_string()) throw fail("field \"kind\" must be a string");
    const auto kind = kind_json.get<std::string>();
    if (!log) {
      if (kind != "header") throw fail("the first line must be the header ({\"kind\":\"header\",...})");
      if (u32(j, "version") != 1) throw fail("unsupported trace version (this kvscope reads version 1)");
      TraceHeader h;
      const auto& policy = field(j, "policy");
      if (!policy.is_string()) throw fail("field \"policy\" must be a string");
      h.policy = policy.get<std::string>();
      h.n_layer = u32(j, "n_layer");
      h.n_kv_head = u32(j, "n_kv_head");
      h.capacity = u32(j, "capacity");
      h.block_slots = u32(j, "block_slots");
      const auto& pins = field(j, "pins");
      if (!pins.is_array()) throw fail("field \"pins\" must be an array of \"START:END\" strings");
      for (const auto& p : pins) {
        if (!p.is_string()) throw fail("field \"pins\" must be an array of \"START:END\" strings");
        try {
          h.pins.push_back(parse_pinned_span(p.get<std::string>()));
        } catch (const std::invalid_argument& e) {
          throw fail(e.what());
        }
      }
      log.emplace(std::move(h));
      continue;
    }
    if (kind == "write") {
      const auto& positions = field(j, "positions");
      const auto& tokens = field(j, "tokens");
      if (!positions.is_array() || !tokens.is_array() || positions.size() != tokens.size())
        throw fail("\"positions\" and \"tokens\" must be arrays of the same length");
      std::vector<int32_t> p, t;
      for (const auto& v : positions) p.push_back(i32_value(v, "each of \"positions\""));
      for (const auto& v : tokens) t.push_back(i32_value(v, "each of \"tokens\""));
      log->written(u32(j, "step"), p, t);
    } else if (kind == "evict") {
      log->evicted(slot_event(j));
    } else if (kind == "recall") {
      log->recalled(RecallEvent{slot_event(j)});
    } else if (kind == "truncate") {
      log->truncated(u32(j, "step"), i32(j, "position"));
    } else if (kind == "occupancy") {
      const auto& live = field(j, "live");
      if (!live.is_array() || live.size() != log->header().n_layer)
        throw fail("\"live\" must hold one array per layer (n_layer in the header)");
      Occupancy o{u32(j, "step"), {}};
      for (const auto& heads : live) {
        if (!heads.is_array() || heads.size() != log->header().n_kv_head)
          throw fail("each layer of \"live\" must hold one count per kv head (n_kv_head in the header)");
        for (const auto& n : heads) {
          const int32_t live_slots = i32_value(n, "each count of \"live\"");
          if (live_slots < 0) throw fail("each count of \"live\" must be >= 0");
          o.live.push_back(static_cast<uint32_t>(live_slots));
        }
      }
      log->add_occupancy(std::move(o));
    } else {
      throw fail(fmt::format("unknown kind \"{}\" (expected write, evict, recall, truncate, occupancy)", kind));
    }
  }
  if (!log) throw std::runtime_error(fmt::format("{}: empty trace: no header line", source_name));
  return std::move(*log);
}

// --------------------------------------------------------------------- replay

void replay(const EventLog& log, std::span<SlotTable> tables) {
  const auto& h = log.header();
  if (tables.size() != size_t{h.n_layer} * h.n_kv_head)
    throw std::invalid_argument(fmt::format("replay: {} tables given, the trace has {} layers x {} kv heads",
                                            tables.size(), h.n_layer, h.n_kv_head));
  const auto& events = log.events();
  for (size_t i = 0; i < events.size(); ++i) {
    auto mismatch = [&](const std::string& what) {
      return std::runtime_error(fmt::format("replay: event {} (step {}): {}", i, event_step(events[i]), what));
    };
    auto table_of = [&](const EvictionEvent& e) -> SlotTable& {
      if (e.layer >= h.n_layer || e.kv_head >= h.n_kv_head || e.slot >= h.capacity)
        throw mismatch(fmt::format("layer {} kv_head {} slot {} is outside the trace's shape", e.layer, e.kv_head,
                                   e.slot));
      return tables[size_t{e.layer} * h.n_kv_head + e.kv_head];
    };
    const auto& event = events[i];
    if (const auto* w = std::get_if<TokensWritten>(&event)) {
      for (auto& table : tables)
        for (const int32_t position : w->positions)
          if (table.assign(position) < 0) throw mismatch(fmt::format("no free slot for position {}", position));
    } else if (const auto* r = std::get_if<RecallEvent>(&event)) {
      const int32_t slot = table_of(*r).assign(r->position);
      if (slot != static_cast<int32_t>(r->slot))
        throw mismatch(fmt::format("recall of position {} landed in slot {}, the trace says {}", r->position, slot,
                                   r->slot));
    } else if (const auto* e = std::get_if<EvictionEvent>(&event)) {
      auto& table = table_of(*e);
      if (table.position(e->slot) != e->position)
        throw mismatch(fmt::format("layer {} kv_head {} slot {} holds position {}, the eviction says {}", e->layer,
                                   e->kv_head, e->slot, table.position(e->slot), e->position));
      table.release(e->slot);
    } else {
      const auto& t = std::get<Truncation>(event);
      for (auto& table : tables)
        for (uint32_t slot = 0; slot < table.capacity(); ++slot)
          if (table.position(slot) >= t.position) table.release(slot);
    }
  }
}

std::vector<SlotTable> replay(const EventLog& log) {
  const auto& h = log.header();
  std::vector<SlotTable> tables(size_t{h.n_layer} * h.n_kv_head, SlotTable(h.capacity, h.block_slots));
  replay(log, tables);
  return tables;
}

}  // namespace kvscope::kv
