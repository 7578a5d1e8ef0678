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
//   {"kind":"base","step":7000,"folded":252000,"tables":[{"positions":[..],
//    "open_block":-1},...]}
//       (second line, only in a trace of a log that dropped its oldest
//       events, see EventLog) the tables, [layer][kv_head], as the 252000
//       events before the next line left them: slot -> position (-1 empty)
//       and SlotTable's open block
// "step" counts forward calls from 0 (prompt chunks, then one per decoded
// token). Events carry the step they happened before (evictions, recalls)
// or in (writes).
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <iosfwd>
#include <iterator>
#include <memory>
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

// A growing sequence kept in chunks of 4096: a copy shares the full chunks
// (it costs a pointer per chunk and a copy of the open one), and the oldest
// chunks can be dropped. The session worker publishes the eviction log to the
// window every step; copying it whole made each step cost the length of the
// history.
template <class T>
class ChunkedSequence {
 public:
  static constexpr size_t kChunk = 4096;
  using Chunk = std::vector<T>;

  ChunkedSequence() = default;
  ChunkedSequence(const ChunkedSequence& o)
      : full_(o.full_), open_(o.open_ ? std::make_shared<Chunk>(*o.open_) : nullptr), size_(o.size_) {}
  ChunkedSequence& operator=(const ChunkedSequence& o) {
    if (this != &o) *this = ChunkedSequence(o);
    return *this;
  }
  ChunkedSequence(ChunkedSequence&&) noexcept = default;
  ChunkedSequence& operator=(ChunkedSequence&&) noexcept = default;

  void push_back(T value) {
    if (!open_) {
      open_ = std::make_shared<Chunk>();
      open_->reserve(kChunk);
    }
    open_->push_back(std::move(value));
    ++size_;
    if (open_->size() == kChunk) {
      full_.push_back(std::move(open_));
      open_.reset();
    }
  }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const T& back() const { return open_ ? open_->back() : full_.back()->back(); }
  const T& front() const { return *begin(); }
  // Every full chunk holds kChunk items, so indexing is two divisions.
  const T& operator[](size_t i) const {
    return i / kChunk < full_.size() ? (*full_[i / kChunk])[i % kChunk] : (*open_)[i - full_.size() * kChunk];
  }
  size_t full_chunks() const { return full_.size(); }
  // The oldest full chunk, removed (null when every chunk is still open).
  std::shared_ptr<const Chunk> pop_front_chunk() {
    if (full_.empty()) return nullptr;
    auto chunk = std::move(full_.front());
    full_.pop_front();
    size_ -= chunk->size();
    return chunk;
  }
  void clear() {
    full_.clear();
    open_.reset();
    size_ = 0;
  }

  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    using pointer = const T*;
    using reference = const T&;
    const_iterator() = default;
    const_iterator(const ChunkedSequence* s, size_t chunk, size_t index) : s_(s), chunk_(chunk), index_(index) {}
    reference operator*() const { return chunk_ < s_->full_.size() ? (*s_->full_[chunk_])[index_] : (*s_->open_)[index_]; }
    pointer operator->() const { return &**this; }
    const_iterator& operator++() {
      if (chunk_ < s_->full_.size() && ++index_ == kChunk) {
        ++chunk_;
        index_ = 0;
      } else if (chunk_ >= s_->full_.size()) {
        ++index_;
      }
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator before = *this;
      ++*this;
      return before;
    }
    bool operator==(const const_iterator& o) const { return chunk_ == o.chunk_ && index_ == o.index_; }
    bool operator!=(const const_iterator& o) const { return !(*this == o); }

   private:
    const ChunkedSequence* s_ = nullptr;
    size_t chunk_ = 0, index_ = 0;
  };
  const_iterator begin() const { return {this, 0, 0}; }
  const_iterator end() const { return {this, full_.size(), open_ ? open_->size() : 0}; }

 private:
  std::deque<std::shared_ptr<const Chunk>> full_;
  std::shared_ptr<Chunk> open_;  // never empty when set
  size_t size_ = 0;
};

// The log keeps at most max_events() events in memory (hours of chat would
// otherwise grow it without limit: rolling StreamingLLM evicts once per layer
// and kv head every token). Past the limit the oldest chunks are folded into
// base tables — the slot tables as those events left them — so replaying the
// kept events from the base still rebuilds the tables exactly; only the
// scrubber's reach into the past is shortened (to base_step()). A trace file
// written while the log runs keeps everything: TraceWriter is called before
// each fold (on_fold).
class EventLog {
 public:
  static constexpr size_t kDefaultMaxEvents = size_t{1} << 18;  // ~16 MiB of events

  // `max_events` of SIZE_MAX: the process's default (kDefaultMaxEvents, or
  // what set_default_max_events chose: the window's and soak's --log-events).
  explicit EventLog(TraceHeader header = {}, size_t max_events = SIZE_MAX)
      : header_(std::move(header)), max_events_(max_events == SIZE_MAX ? default_max_events() : max_events) {}
  static size_t default_max_events();
  static void set_default_max_events(size_t max_events);

  const TraceHeader& header() const { return header_; }
  void written(uint32_t step, std::span<const int32_t> positions, std::span<const int32_t> tokens);
  void evicted(const EvictionEvent& event);
  void recalled(const RecallEvent& event);
  void truncated(uint32_t step, int32_t position);
  // Records live slots of every table (`tables` is [layer][kv_head]).
  void occupancy(uint32_t step, std::span<const SlotTable> tables);
  void add_occupancy(Occupancy occupancy);

  // The events kept in memory, oldest first (after base()).
  const ChunkedSequence<TraceEvent>& events() const { return events_; }
  const ChunkedSequence<Occupancy>& occupancies() const { return occupancies_; }
  uint64_t eviction_count() const { return evictions_; }
  // Every event recorded, folded ones included (grows with each event).
  uint64_t recorded_events() const { return folded_events_ + events_.size(); }
  // The highest step of any event recorded (kept or folded), -1 before any.
  int64_t last_step() const { return last_step_; }
  void clear();

  // 0: no limit. At least one chunk (4096 events) is always kept.
  size_t max_events() const { return max_events_; }
  void set_max_events(size_t max_events);
  // Called with the log before each fold, while every event is still there.
  void on_fold(std::function<void(const EventLog&)> callback) { on_fold_ = std::move(callback); }
  // What the folded events left: one table per (layer, kv head); empty when
  // nothing was folded (the kept events start from empty tables).
  const std::vector<SlotTable>& base() const { return base_; }
  // Events folded so far, and the first step whose events are all kept.
  uint64_t folded_events() const { return folded_events_; }
  uint64_t folded_occupancies() const { return folded_occupancies_; }
  uint32_t base_step() const { return base_step_; }
  // Sets the base a trace file starts from (read_jsonl's "base" line).
  void set_base(uint32_t step, uint64_t folded_events, std::vector<SlotTable> tables);

  // The kept events of steps <= `step` and the occupancies after them, from
  // the same base: the tables as they were after that step.
  EventLog until(uint32_t step) const;

 private:
  void kept(TraceEvent event);
  void fold_if_over();

  TraceHeader header_;
  ChunkedSequence<TraceEvent> events_;
  ChunkedSequence<Occupancy> occupancies_;
  uint64_t evictions_ = 0;
  int64_t last_step_ = -1;
  size_t max_events_ = 0;
  std::function<void(const EventLog&)> on_fold_;
  std::vector<SlotTable> base_;
  uint64_t folded_events_ = 0, folded_occupancies_ = 0;
  uint32_t base_step_ = 0;
};

// Writes the JSONL format above as the log grows: header (and the log's base
// as a {"kind":"base",...} line when it has one) first, then at each append()
// the events and occupancies recorded since the last one. Install
// `log.on_fold(...)` calling append() and nothing is lost when the log folds.
class TraceWriter {
 public:
  TraceWriter(std::ostream& out, const EventLog& log);
  void append(const EventLog& log);

 private:
  std::ostream* out_;
  uint64_t events_written_ = 0, occupancies_written_ = 0;  // counted from the log's first event, folded ones included
};

// The JSONL format above: header, base (when the log has folded), then the
// kept events and occupancies in step order.
void write_jsonl(const EventLog& log, std::ostream& out);
// Reads what write_jsonl wrote. Throws std::runtime_error naming
// `source_name`, the line and the field that is wrong.
EventLog read_jsonl(std::istream& in, std::string_view source_name);

// Applies the kept events, in order, to `tables` ([layer][kv_head], of the
// header's capacity and block size, as the log's base left them: empty when
// the log has not folded). Throws std::runtime_error at the
// first event that does not match the tables (an eviction of a slot that
// holds another position, a recall landing in another slot than recorded,
// a write that finds no free slot), naming the event's index.
void replay(const EventLog& log, std::span<SlotTable> tables);
// The log's base (or fresh tables of the header's shape) with the kept
// events replayed on them.
std::vector<SlotTable> replay(const EventLog& log);

}  // namespace kvscope::kv
