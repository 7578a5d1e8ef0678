// Lost attention: why an evicting cache diverges from the full one.
//
// At a step where both caches see the same tokens, the full (baseline)
// cache's query spreads its attention over every earlier position. The mass
// it puts on positions the test cache no longer holds is what the test
// cache cannot attend to: its "lost attention". Per layer it is the mean over
// query heads of the baseline probability on positions absent from the
// test cache's slot table of that head's kv head (0: the test cache holds
// everything the baseline looked at; 1: it holds nothing the baseline looked
// at). Summed per position over a run, it names the *regretted evictions*:
// the tokens whose eviction cost the most attention.
//
// Pure functions of plain arrays, so `kvscope eval`, the probes and the
// window's side-by-side view compute it the same way, and the tests can
// check it on hand-made inputs.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "kv/cache.h"
#include "models/forward.h"
#include "models/hparams.h"

namespace kvscope {


// One query's attention in the baseline cache, by token position:
// probs[(layer * n_head + head) * n_positions + position]. Positions the
// query cannot see (later ones, or ones the cache does not hold) are 0.
struct AttentionRows {
  uint32_t n_layer = 0, n_head = 0, n_positions = 0;
  std::vector<float> probs;
  float at(uint32_t layer, uint32_t head, uint32_t position) const {
    return probs[(size_t{layer} * n_head + head) * n_positions + position];
  }
};

// Which positions a cache holds: held[(layer * n_kv_head + kv_head) * n_positions + position].
struct HeldPositions {
  uint32_t n_layer = 0, n_kv_head = 0, n_positions = 0;
  std::vector<uint8_t> held;
  bool at(uint32_t layer, uint32_t kv_head, uint32_t position) const {
    return held[(size_t{layer} * n_kv_head + kv_head) * n_positions + position] != 0;
  }
};

// The positions 0 .. n_positions-1 each table of `cache` holds now (its
// tables are [layer][kv_head]).
HeldPositions held_positions(const kv::KvCache& cache, uint32_t n_positions);

// The rows `probe` read back for its session's last forward call (the probe
// must have been on for it), turned from cache slots
// into positions through the slot tables of `cache`, the cache that call ran
// on. Query heads map to kv heads as grouped-query attention does: head h
// reads kv head h / (n_head / n_kv_head).
AttentionRows probe_attention_rows(const AttentionProbe& probe, const LlamaConfig& cfg, const kv::KvCache& cache,
                                   uint32_t n_positions);

// Per layer: the mean over query heads of the baseline's probability on
// positions the test cache does not hold in that head's kv head. Throws
// std::invalid_argument when the shapes do not match (n_layer, n_positions,
// n_head not a multiple of n_kv_head).
std::vector<double> lost_attention(const AttentionRows& baseline, const HeldPositions& test);

// A token whose eviction cost the most attention over a run: `lost_mass` is
// the sum over steps of the mean over layers of its share of the lost mass.
struct RegrettedEviction {
  uint32_t sequence = 0;  // which sequence of the run (eval: the chunk)
  int32_t position = 0;   // in that sequence
  int32_t token = -1;     // token id at that position (-1: unknown)
  double lost_mass = 0;
};

struct LostAttentionSummary {
  uint64_t steps = 0;              // steps added
  double mean = 0;                 // over steps of the mean over layers
  double p99 = 0;                  // 99th percentile over steps of the mean over layers
  double max = 0;
  std::vector<double> per_layer;   // mean over steps, per layer
  std::vector<RegrettedEviction> regretted;  // most lost mass first, at most `top` of them
};

// Adds steps one at a time and summarises them.
class LostAttentionAccumulator {
 public:
  // Adds one step: the baseline's rows, the test cache's held positions at
  // that step, the token ids by position (for the regretted list; may be
  // shorter than n_positions), and which sequence the step belongs to.
  // Returns the step's per-layer lost attention.
  std::vector<double> add(const AttentionRows& baseline, const HeldPositions& test,
                          std::span<const int32_t> tokens = {}, uint32_t sequence = 0);
  // Adds a step where the test cache held everything (all zeros): a scored
  // position inside a prompt that fit the budget.
  void add_nothing_lost(uint32_t n_layer);
  LostAttentionSummary summary(size_t top = 10) const;
  uint64_t steps() const { return step_means_.size(); }

 private:
  std::vector<double> step_means_;   // per step, mean over layers
  std::vector<double> layer_sums_;   // per layer, over steps
  struct Key {
    uint32_t sequence;
    int32_t position;
    bool operator<(const Key& o) const {
      return sequence != o.sequence ? sequence < o.sequence : position < o.position;
    }
  };
  struct Lost {
    int32_t token = -1;
    double mass = 0;
  };
  std::map<Key, Lost> by_position_;
};

}  // namespace kvscope
