// The CPU reference of eviction: the same EvictionDriver the cache runs
// (kv/eviction_driver.h), over slot tables on the CPU, with attention
// supplied by the caller (random scores, or a CPU-computed softmax) instead
// of the shader's. The tests hold every policy's invariants here, and the GPU
// run against it.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "kv/eviction_driver.h"
#include "kv/event_log.h"
#include "kv/pins.h"
#include "kv/policy.h"

namespace kvscope::kv {

// Attention of one query on one layer's kv head: writes probs[slot] for
// every live slot of `table` whose position <= query_position, summed over
// the query heads sharing the kv head; leaves other entries 0.
using AttentionFn = std::function<void(uint32_t layer, uint32_t kv_head, int32_t query_position,
                                       const SlotTable& table, std::span<float> probs)>;

class PolicyRunner {
 public:
  // Runs a policy made as `like` was (its spec and shape; make_policy) with
  // these pins. `max_chunk` bounds the tokens of one prefill call (the
  // model's max_batch).
  PolicyRunner(const EvictionPolicy& like, const PinnedSpans& pins, AttentionFn attention, uint32_t max_chunk);

  // Feeds a prompt in chunks no larger than the room the policy can make
  // (budget - live sinks and pinned tokens), then calls on_prefill.
  void prefill(std::span<const int32_t> tokens);
  // One decode step of one token.
  void decode(int32_t token);

  // Called after every step, with that step's info: the tests' invariants.
  std::function<void(const PolicyRunner&, const StepInfo&)> after_step;

  const EvictionPolicy& policy() const { return driver_.policy(); }
  const PinnedSpans& pins() const { return driver_.pins(); }
  std::span<const SlotTable> tables() const { return tables_; }
  const SlotTable& table(uint32_t layer, uint32_t kv_head) const {
    return tables_[size_t{layer} * driver_.policy().shape().n_kv_head + kv_head];
  }
  const EventLog& log() const { return driver_.log(); }
  const ScoreBuffer& scores() const { return driver_.scores(); }
  const std::vector<int32_t>& tokens() const { return tokens_; }  // by position
  int32_t next_position() const { return static_cast<int32_t>(tokens_.size()); }
  uint32_t steps() const { return driver_.steps(); }

 private:
  // Makes room (the driver), writes, attends, logs.
  void step(std::span<const int32_t> tokens);

  EvictionDriver driver_;
  AttentionFn attention_;
  uint32_t max_chunk_;
  std::vector<SlotTable> tables_;  // [layer][kv_head]
  std::vector<int32_t> tokens_;
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
