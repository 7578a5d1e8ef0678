#include "kv/event_log.h"

#include <atomic>
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

namespace {

uint32_t event_step(const TraceEvent& event) {
  return std::visit([](const auto& e) { return e.step; }, event);
}

template <class Events>
void apply_events(const TraceHeader& h, const Events& events, std::span<SlotTable> tables, uint64_t first_index);

}  // namespace

namespace {
std::atomic<size_t> g_default_max_events{EventLog::kDefaultMaxEvents};
}  // namespace

size_t EventLog::default_max_events() { return g_default_max_events.load(); }
void EventLog::set_default_max_events(size_t max_events) { g_default_max_events = max_events; }

void EventLog::kept(TraceEvent event) {
  last_step_ = std::max<int64_t>(last_step_, event_step(event));
  events_.push_back(std::move(event));
  fold_if_over();
}

void EventLog::written(uint32_t step, std::span<const int32_t> positions, std::span<const int32_t> tokens) {
  TokensWritten w{step, {positions.begin(), positions.end()}, {tokens.begin(), tokens.end()}};
  w.tokens.resize(w.positions.size(), -1);
  kept(std::move(w));
}

void EventLog::evicted(const EvictionEvent& event) {
  ++evictions_;
  kept(event);
}

void EventLog::recalled(const RecallEvent& event) { kept(event); }

void EventLog::truncated(uint32_t step, int32_t position) { kept(Truncation{step, position}); }

void EventLog::occupancy(uint32_t step, std::span<const SlotTable> tables) {
  Occupancy o{step, {}};
  o.live.reserve(tables.size());
  for (const auto& t : tables) o.live.push_back(t.live());
  add_occupancy(std::move(o));
}

void EventLog::add_occupancy(Occupancy occupancy) {
  last_step_ = std::max<int64_t>(last_step_, occupancy.step);
  occupancies_.push_back(std::move(occupancy));
  // One per step: a log whose steps evict little (or nothing) would grow
  // by its occupancies alone. They keep to an eighth of the event limit
  // (at least two chunks); the oldest go first (after the trace has them).
  const size_t limit = std::max(max_events_ / 8, 2 * ChunkedSequence<Occupancy>::kChunk);
  if (max_events_ == 0 || occupancies_.size() <= limit) return;
  if (on_fold_) on_fold_(*this);
  while (occupancies_.size() > limit && occupancies_.full_chunks() > 0)
    folded_occupancies_ += occupancies_.pop_front_chunk()->size();
}

void EventLog::clear() {
  events_.clear();
  occupancies_.clear();
  evictions_ = 0;
  last_step_ = -1;
  base_.clear();
  folded_events_ = folded_occupancies_ = 0;
  base_step_ = 0;
}

void EventLog::set_max_events(size_t max_events) {
  max_events_ = max_events;
  fold_if_over();
}

void EventLog::set_base(uint32_t step, uint64_t folded_events, std::vector<SlotTable> tables) {
  if (tables.size() != size_t{header_.n_layer} * header_.n_kv_head)
    throw std::invalid_argument(fmt::format("base: {} tables, the trace has {} layers x {} kv heads", tables.size(),
                                            header_.n_layer, header_.n_kv_head));
  base_ = std::move(tables);
  base_step_ = step;
  folded_events_ = folded_events;
}

void EventLog::fold_if_over() {
  if (max_events_ == 0 || events_.size() <= std::max(max_events_, ChunkedSequence<TraceEvent>::kChunk)) return;
  if (events_.full_chunks() == 0) return;
  if (on_fold_) on_fold_(*this);
  if (base_.empty()) base_.assign(size_t{header_.n_layer} * header_.n_kv_head, SlotTable(header_.capacity, header_.block_slots));
  // Fold down to three quarters of the limit, a chunk at a time.
  const size_t target = std::max(max_events_ - max_events_ / 4, ChunkedSequence<TraceEvent>::kChunk);
  while (events_.size() > target && events_.full_chunks() > 0) {
    const auto chunk = events_.pop_front_chunk();
    apply_events(header_, *chunk, base_, folded_events_);
    folded_events_ += chunk->size();
  }
  // The first kept step may have events on both sides of the cut; the
  // history is whole from the step after the last folded event's.
  base_step_ = events_.empty() ? static_cast<uint32_t>(last_step_ + 1) : event_step(events_.front());
  while (occupancies_.full_chunks() > 0) {  // occupancy chunks wholly before the kept events go too
    auto it = occupancies_.begin();
    std::advance(it, ChunkedSequence<Occupancy>::kChunk - 1);
    if (it->step >= base_step_) break;
    folded_occupancies_ += occupancies_.pop_front_chunk()->size();
  }
}

EventLog EventLog::until(uint32_t step) const {
  EventLog out(header_, 0);
  out.base_ = base_;
  out.base_step_ = base_step_;
  out.folded_events_ = folded_events_;
  out.folded_occupancies_ = folded_occupancies_;
  for (const TraceEvent& event : events_) {
    if (event_step(event) > step) continue;
    if (std::holds_alternative<EvictionEvent>(event)) ++out.evictions_;
    out.last_step_ = std::max<int64_t>(out.last_step_, event_step(event));
    out.events_.push_back(event);
  }
  for (const Occupancy& o : occupancies_)
    if (o.step <= step) out.add_occupancy(o);
  return out;
}

// ---------------------------------------------------------------------- JSONL

namespace {

ordered slot_event_json(std::string_view kind, const EvictionEvent& e) {
  return {{"kind", kind},           {"step", e.step},         {"layer", e.layer},
          {"kv_head", e.kv_head},   {"slot", e.slot},         {"position", e.position},
          {"token", e.token},       {"score", e.score}};
}

}  // namespace

TraceWriter::TraceWriter(std::ostream& out, const EventLog& log) : out_(&out) {
  const auto& h = log.header();
  ordered pins = ordered::array();
  for (const auto& p : h.pins) pins.push_back(to_string(p));
  out << ordered{{"kind", "header"},          {"version", 1},         {"policy", h.policy},
              {"n_layer", h.n_layer},      {"n_kv_head", h.n_kv_head}, {"capacity", h.capacity},
              {"block_slots", h.block_slots}, {"pins", pins}}
             .dump()
      << '\n';
  if (!log.base().empty()) {
    ordered tables = ordered::array();
    for (const SlotTable& t : log.base())
      tables.push_back(ordered{{"positions", t.positions()}, {"open_block", t.open_block()}});
    out << ordered{{"kind", "base"}, {"step", log.base_step()}, {"folded", log.folded_events()}, {"tables", tables}}
               .dump()
        << '\n';
  }
  events_written_ = log.folded_events();
  occupancies_written_ = log.folded_occupancies();
}

void TraceWriter::append(const EventLog& log) {
  if (events_written_ < log.folded_events() || occupancies_written_ < log.folded_occupancies())
    throw std::logic_error("TraceWriter: the log folded events that were never written (append before each fold)");
  const auto& h = log.header();
  std::ostream& out = *out_;
  auto occupancy = log.occupancies().begin();
  std::advance(occupancy, occupancies_written_ - log.folded_occupancies());
  // Events and occupancies merged by step: a step's occupancy follows all
  // of its events, so a reader sees the tables as they were after the step.
  auto flush_occupancies_before = [&](uint64_t step) {
    for (; occupancy != log.occupancies().end() && occupancy->step < step; ++occupancy, ++occupancies_written_) {
      const Occupancy& o = *occupancy;
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
  auto event = log.events().begin();
  std::advance(event, events_written_ - log.folded_events());
  for (; event != log.events().end(); ++event, ++events_written_) {
    flush_occupancies_before(event_step(*event));
    if (const auto* w = std::get_if<TokensWritten>(&*event)) {
      out << ordered{{"kind", "write"}, {"step", w->step}, {"positions", w->positions}, {"tokens", w->tokens}}.dump();
    } else if (const auto* r = std::get_if<RecallEvent>(&*event)) {
      out << slot_event_json("recall", *r).dump();
    } else if (const auto* e = std::get_if<EvictionEvent>(&*event)) {
      out << slot_event_json("evict", *e).dump();
    } else {
      const auto& t = std::get<Truncation>(*event);
      out << ordered{{"kind", "truncate"}, {"step", t.step}, {"position", t.position}}.dump();
    }
    out << '\n';
  }
  flush_occupancies_before(UINT64_MAX);
  if (!out) throw std::runtime_error("writing the trace failed (is the disk full?)");
}

void write_jsonl(const EventLog& log, std::ostream& out) {
  TraceWriter writer(out, log);
  writer.append(log);
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
    } catch (const json::exception& e) {  // parse errors, and numbers beyond double's range
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
      // Replaying allocates a table per (layer, kv head): a header may not
      // ask for more slots than any model has (1 GiB of tables).
      if (uint64_t{h.n_layer} * h.n_kv_head * std::max(h.capacity, 1u) > (uint64_t{1} << 28))
        throw fail(fmt::format("{} layers x {} kv heads x {} slots is larger than any model's cache", h.n_layer,
                               h.n_kv_head, h.capacity));
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
    if (kind == "base") {
      if (!log->events().empty() || !log->occupancies().empty() || !log->base().empty())
        throw fail("a \"base\" line must come right after the header");
      const auto& h = log->header();
      const auto& tables = field(j, "tables");
      if (!tables.is_array() || tables.size() != size_t{h.n_layer} * h.n_kv_head)
        throw fail("\"tables\" must hold one table per layer and kv head (n_layer x n_kv_head in the header)");
      const auto& folded = field(j, "folded");
      if (!folded.is_number_unsigned()) throw fail("field \"folded\" must be an integer >= 0");
      std::vector<SlotTable> base;
      base.reserve(tables.size());
      for (const auto& t : tables) {
        if (!t.is_object()) throw fail("each of \"tables\" must be an object");
        const auto& positions = field(t, "positions");
        if (!positions.is_array() || positions.size() != h.capacity)
          throw fail("each table's \"positions\" must hold one position per slot (capacity in the header)");
        std::vector<int32_t> p;
        p.reserve(positions.size());
        for (const auto& v : positions) p.push_back(i32_value(v, "each of \"positions\""));
        try {
          base.push_back(SlotTable::restore(std::move(p), h.block_slots, i32(t, "open_block")));
        } catch (const std::invalid_argument& e) {
          throw fail(fmt::format("a base table does not hold together: {}", e.what()));
        }
      }
      log->set_base(u32(j, "step"), folded.get<uint64_t>(), std::move(base));
    } else if (kind == "write") {
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
      throw fail(fmt::format("unknown kind \"{}\" (expected base, write, evict, recall, truncate, occupancy)", kind));
    }
  }
  if (!log) throw std::runtime_error(fmt::format("{}: empty trace: no header line", source_name));
  return std::move(*log);
}

// --------------------------------------------------------------------- replay

namespace {

template <class Events>
void apply_events(const TraceHeader& h, const Events& events, std::span<SlotTable> tables, uint64_t first_index) {
  if (tables.size() != size_t{h.n_layer} * h.n_kv_head)
    throw std::invalid_argument(fmt::format("replay: {} tables given, the trace has {} layers x {} kv heads",
                                            tables.size(), h.n_layer, h.n_kv_head));
  uint64_t i = first_index;
  for (const TraceEvent& event : events) {
    auto mismatch = [&](const std::string& what) {
      return std::runtime_error(fmt::format("replay: event {} (step {}): {}", i, event_step(event), what));
    };
    auto table_of = [&](const EvictionEvent& e) -> SlotTable& {
      if (e.layer >= h.n_layer || e.kv_head >= h.n_kv_head || e.slot >= h.capacity)
        throw mismatch(fmt::format("layer {} kv_head {} slot {} is outside the trace's shape", e.layer, e.kv_head,
                                   e.slot));
      return tables[size_t{e.layer} * h.n_kv_head + e.kv_head];
    };
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
    ++i;
  }
}

}  // namespace

void replay(const EventLog& log, std::span<SlotTable> tables) {
  apply_events(log.header(), log.events(), tables, log.folded_events());
}

std::vector<SlotTable> replay(const EventLog& log) {
  const auto& h = log.header();
  std::vector<SlotTable> tables = log.base();
  if (tables.empty()) tables.assign(size_t{h.n_layer} * h.n_kv_head, SlotTable(h.capacity, h.block_slots));
  replay(log, tables);
  return tables;
}

}  // namespace kvscope::kv
