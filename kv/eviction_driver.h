// The eviction driver: one policy, its pinned spans, the event log and the
// per-slot scores of the last step, acting on slot tables it does not own.
//
// KvCache runs it on the device path (the scores come back from the attention
// shader) and PolicyRunner, the CPU reference, runs the same object over
// tables of its own (the scores come from a CPU attention), so the invariant
// tests exercise the code that really evicts. The contract it carries out is
// kv/policy.h's: before a step writes n tokens the policy frees slots until
// live + n <= budget in every (layer, kv_head), the step writes into freed
// slots, and after the last prompt step the policy sees the prompt once more.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kv/slot_table.h"
#include "kv/event_log.h"
#include "kv/pins.h"
#include "kv/policy.h"

namespace kvscope::kv {

// The per-slot score buffer, [layer][kv_head][capacity], kept as the
// policy's ScoreRequest says (kv/policy.h): the host side of the buffer the
// attention shader fills, or what the CPU reference accumulates itself.
class ScoreBuffer {
 public:
  ScoreBuffer(const PolicyShape& shape, ScoreRequest request);
  const ScoreRequest& request() const { return request_; }
  // A forward call begins: LastQueries zeroes everything (Accumulated keeps it).
  void begin_call();
  // The slot got a new token: Accumulated zeroes its entry (it scored the old one).
  void slot_assigned(uint32_t layer, uint32_t kv_head, uint32_t slot);
  // Query `index` of a call of `n_queries` attended with `probs` ([capacity]).
  void add(uint32_t layer, uint32_t kv_head, uint32_t index, uint32_t n_queries, std::span<const float> probs);
  LayerScores layer(uint32_t layer) const;
  // One layer's values to overwrite with the device's ([kv_head][capacity]).
  std::span<float> layer_values(uint32_t layer);
  std::span<const float> values() const { return values_; }
  void clear();

 private:
  PolicyShape shape_;
  ScoreRequest request_;
  std::vector<float> values_;
};

class EvictionDriver {
 public:
  // `block_slots`: the slot tables' block size (for the log's header).
  EvictionDriver(std::unique_ptr<EvictionPolicy> policy, PinnedSpans pins, uint32_t block_slots);

  const EvictionPolicy& policy() const { return *policy_; }
  const PinnedSpans& pins() const { return pins_; }
  const EventLog& log() const { return log_; }
  EventLog& log() { return log_; }  // the cache's spill tier logs its recalls here
  const ScoreBuffer& scores() const { return scores_; }
  ScoreBuffer& scores() { return scores_; }
  uint32_t steps() const { return step_; }
  bool prefill_done() const { return prefill_done_; }
  // Token id by position, -1 where unknown (what the log names).
  std::span<const int32_t> token_ids() const { return token_ids_; }

  // Layers the policy leaves alone: sliding-window layers, which hold only
  // their window by design (KvCache::reserve). Empty: none.
  void set_local_layers(std::vector<bool> local) { local_ = std::move(local); }
  bool local_layer(uint32_t layer) const { return layer < local_.size() && local_[layer]; }

  // The most tokens the next step may write: the smallest budget less the
  // live tokens the policy may not evict (sinks, pins; every live token for
  // `full`, which is also held to the free slots).
  uint32_t room(std::span<const SlotTable> tables) const;

  // What the cache does around the policy in each layer (the spill tier
  // watches what is evicted and recalls entries); default: nothing.
  struct LayerHook {
    virtual ~LayerHook() = default;
    virtual void before(uint32_t /*layer*/) {}
    // After the policy acted on `view`; `incoming` is 0 at the end of the prompt.
    virtual void after(LayerView& /*view*/, uint32_t /*incoming*/) {}
  };

  // Lets the policy free slots of `tables` ([layer][kv_head]) for `incoming`
  // tokens from `next_position`. Throws ContextFull when `full` runs out of
  // room, std::logic_error when an evicting policy leaves a head over budget.
  void make_room(std::span<SlotTable> tables, uint32_t incoming, int32_t next_position, LayerHook* hook = nullptr);
  // The step wrote `positions` (token ids `tokens`, may be shorter: -1) into
  // `tables`: logged with the occupancy, and the step count advances.
  void written(std::span<const SlotTable> tables, std::span<const int32_t> positions,
               std::span<const int32_t> tokens);
  // The prompt is complete: on_prefill once per layer with the last step's
  // scores (SnapKV and PyramidKV compress it now). Later steps are decode steps.
  void end_prefill(std::span<SlotTable> tables, LayerHook* hook = nullptr);
  // Positions >= `position` were removed from the tables.
  void truncated(int32_t position);
  // The sequence starts over.
  void clear();

  // For the scores pass of a step of n tokens: the first query summed, and
  // whether to add to the previous values (kv/policy.h's ScoreKind).
  uint32_t score_first_query(uint32_t n_tokens) const;
  bool scores_accumulate() const;

 private:
  LayerView view(std::span<SlotTable> tables, uint32_t layer, const LayerView::Context& context) const;

  std::unique_ptr<EvictionPolicy> policy_;
  PinnedSpans pins_;
  EventLog log_;
  ScoreBuffer scores_;
  std::vector<int32_t> token_ids_;
  std::vector<bool> local_;
  uint32_t step_ = 0;
  bool prefill_done_ = false;
};

}  // namespace kvscope::kv
