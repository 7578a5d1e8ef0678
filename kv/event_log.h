// The eviction log: everything that changed which token lives in which slot,
// in order, so that replaying it on empty slot tables rebuilds them exactly
// (the GUI's token strip and timeline are drawn from it, not from guesses).
//
// `--trace FILE.jsonl` writes one JSON object per line, in order:
//   {"kind":"header","version":1,"policy":"h2o:budget=64,recent=32",
//    "n_layer":8,"n_kv_head":4,"capacity":256,"block_slots":1,"pins":["0:16"]}
//   {"kind":"write","step":0,"positions":[0,1,2],"tokens":[1,403,2731]}
//       tokens written at these positions in every (layer, kv_head): each
//       table assigned a slot per position, in order (SlotTable::assign)
//   {"kind":"evict","step":3,"layer":0,"kv_head":1,"slot":5,"position":17,
//    "token":263,"score":0.0123}
//       the policy freed `slot`, which held `position` (token id `token`, -1
//       when unknown), before step `step` wrote its tokens; `score` is the
//       policy's score for it (0 for policies without scores)
//   {"kind":"recall", same fields as evict}
//       --spill brought `position` back from host memory into `slot`
//   {"kind":"truncate","step":9,"position":40}
//       every slot holding a position >= 40 was emptied (regenerate, edit)
//   {"kind":"occupancy","step":3,"live":[[60,61],[64,64],...]}
//       after step 3: live slots per layer, per kv head
// "step" counts forward calls from 0 (prompt chunks, then one per decoded
// token). Events carry the step they happened before (evictions, recalls)
// or in (writes).
#pragma once
#include <cstdint>
#include <iosfwd>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kv/slot_table.h"
#include "kv/pins.h"

namespace kvscope::kv {

struct TraceHeader {
  std::string policy;  // the canonical policy spec
  uint32_t n_layer = 0, n_kv_head = 0, capacity = 0;
  uint32_t block_slots = 1;  // SlotTable's block size (kivi2 keys: token_group)
  std::vector<PinnedSpan> pins;
};

struct TokensWritten {
  uint32_t step = 0;
  std::vector<int32_t> positions;
  std::vector<int32_t> tokens;  // same length as positions
};

struct EvictionEvent {
  uint32_t step = 0, layer = 0, kv_head = 0, slot = 0;
  int32_t position = -1;
  int32_t token = -1;
  float score = 0;
};

// A spilled entry brought back into `slot` (fields as EvictionEvent).
struct RecallEvent : EvictionEvent {};

struct Truncation {
  uint32_t step = 0;
  int32_t position = 0;  // slots holding positions >= this were emptied
};

using TraceEvent = std::variant<TokensWritten, EvictionEvent, RecallEvent, Truncation>;

struct Occupancy {
  uint32_t step = 0;
  std::vector<uint32_t> live;  // [layer][kv_head]
};

class EventLog {
 public:
  explicit EventLog(TraceHeader header = {}) : header_(std::move(header)) {}

  const TraceHeader& header() const { return header_; }
  void written(uint32_t step, std::span<const int32_t> positions, std::span<const int32_t> tokens);
  void evicted(const EvictionEvent& event);
  void recalled(const RecallEvent& event);
  void truncated(uint32_t step, int32_t position);
  // Records live slots of every table (`tables` is [layer][kv_head]).
  void occupancy(uint32_t step, std::span<const SlotTable> tables);
  void add_occupancy(Occupancy occupancy) { occupancies_.push_back(std::move(occupancy)); }

  const std::vector<TraceEvent>& events() const { return events_; }
  const std::vector<Occupancy>& occupancies() const { return occupancies_; }
  uint64_t eviction_count() const { return evictions_; }
  void clear();

 private:
  TraceHeader header_;
  std::vector<TraceEvent> events_;
  std::vector<Occupancy> occupancies_;
  uint64_t evictions_ = 0;
};

// The JSONL format above: header, then events and occupancies in step order.
void write_jsonl(const EventLog& log, std::ostream& out);
// Reads what write_jsonl wrote. Throws std::runtime_error naming
// `source_name`, the line and the field that is wrong.
EventLog read_jsonl(std::istream& in, std::string_view source_name);

// Applies the events, in order, to `tables` ([layer][kv_head], empty, of
// the header's capacity and block size). Throws std::runtime_error at the
// first event that does not match the tables (an eviction of a slot that
// holds another position, a recall landing in another slot than recorded,
// a write that finds no free slot), naming the event's index.
void replay(const EventLog& log, std::span<SlotTable> tables);
// Fresh tables of the header's shape with the log replayed on them.
std::vector<SlotTable> replay(const EventLog& log);

}  // namespace kvscope::kv
