// The CPU reference of eviction: drives a policy over a token sequence the
// way the cache and session do on the device (kv/policy.h's contract), with
// slot tables, a score buffer and the event log on the CPU, and attention
// supplied by the caller (random scores, or a CPU-computed softmax). The
// tests hold every policy's invariants here, and the GPU run against it.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "kv/event_log.h"
#include "kv/pins.h"
#include "kv/policy.h"

namespace kvscope::kv {

// Attention of one query on one layer's kv head: writes probs[slot] for
// every live slot of `table` whose position <= query_position, summed over
// the query heads sharing the kv head; leaves other entries 0.
using AttentionFn = std::function<void(uint32_t layer, uint32_t kv_head, int32_t query_position,
                                       const SlotTable& table, std::span<float> probs)>;

// The per-slot score buffer, [layer][kv_head][capacity], kept as the
// policy's ScoreRequest says (kv/policy.h): the CPU mirror of the buffer the
// attention shader fills.
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
  std::span<const float> values() const { return values_; }

 private:
  PolicyShape shape_;
  ScoreRequest request_;
  std::vector<float> values_;
};

class PolicyRunner {
 public:
  // `max_chunk` bounds the tokens of one prefill call (the model's max_batch).
  PolicyRunner(EvictionPolicy& policy, const PinnedSpans& pins, AttentionFn attention, uint32_t max_chunk);

  // Feeds a prompt in chunks no larger than the room the policy can make
  // (budget - live sinks and pinned tokens), then calls on_prefill.
  void prefill(std::span<const int32_t> tokens);
  // One decode step of one token.
  void decode(int32_t token);

  // Called after every step, with that step's info: the tests' invariants.
  std::function<void(const PolicyRunner&, const StepInfo&)> after_step;

  EvictionPolicy& policy() const { return *policy_; }
  const PinnedSpans& pins() const { return pins_; }
  std::span<const SlotTable> tables() const { return tables_; }
  const SlotTable& table(uint32_t layer, uint32_t kv_head) const {
    return tables_[size_t{layer} * policy_->shape().n_kv_head + kv_head];
  }
  const EventLog& log() const { return log_; }
  const ScoreBuffer& scores() const { return scores_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }  // by position
  int32_t next_position() const { return static_cast<int32_t>(tokens_.size()); }
  uint32_t steps() const { return step_; }

 private:
  // Largest number of tokens the next prefill call may take.
  uint32_t prefill_room() const;
  // Evicts (policy), checks the budget, writes, attends, logs.
  void step(std::span<const int32_t> tokens, Phase phase);

  EvictionPolicy* policy_;
  PinnedSpans pins_;
  AttentionFn attention_;
  uint32_t max_chunk_;
  std::vector<SlotTable> tables_;  // [layer][kv_head]
  ScoreBuffer scores_;
  EventLog log_;
  std::vector<int32_t> tokens_;
  uint32_t step_ = 0;
};

// Scaled dot-product attention of synthetic queries and keys: vectors of
// head_dim drawn from `seed` (per layer, head and position), softmax of
// q.k / sqrt(head_dim) over the visible live slots per query head, summed
// over the `group` query heads of the kv head — exactly the per-slot score
// the attention shader accumulates, so its sum over slots is `group`.
AttentionFn softmax_attention(uint64_t seed, uint32_t group, uint32_t head_dim);

// Random attention for the invariant tests: probabilities drawn from
// `seed`, the query position, layer and kv head (so a rerun is identical),
// normalized over the visible live slots.
AttentionFn random_attention(uint64_t seed);

}  // namespace kvscope::kv
