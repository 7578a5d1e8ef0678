// tova:budget=B — Token Omission Via Attention (Oren et al. 2024): when over
// budget, drop the token the current query attends to least.
//
// Scores: LastQueries(1) — the attention of the latest query (the last token
// of the previous step) on each slot, summed over the query heads sharing a
// kv head. As in the paper, the score of a token is summed over all heads of
// the layer and every kv head drops the same tokens (the paper found this
// layer-wise choice better than a per-head one).
// Prefill and decode alike: before a step writes n tokens, the layer evicts
// its n' = live + n - B lowest-scoring unpinned tokens. With the budget a
// hard cap the decision uses the previous query: the paper scores with the
// new token already in a cache of B + 1 and may drop the new token itself;
// here the new token is always written. Ties: the older token goes.
#include <unordered_map>

#include "kv/policies/common.h"

namespace kvscope::kv::policies {

namespace {

constexpr PolicyOption kOptions[] = {
    {"budget", OptionKind::Count, true, 0, "live tokens per layer"},
};

class TovaPolicy final : public EvictionPolicy {
 public:
  TovaPolicy(const PolicySpec& spec, const PolicyShape& shape)
      : EvictionPolicy(spec, shape, uniform_budgets(shape, spec.count("budget"))) {}
  std::string_view name() const override { return "tova"; }
  bool per_head() const override { return false; }
  ScoreRequest score_request() const override { return {ScoreKind::LastQueries, 1}; }
  void on_step(LayerView& view, const LayerScores& scores) override {
    const uint32_t excess = view.excess(0);
    if (excess == 0) return;
    // Heads hold the same positions, but not necessarily in the same slots
    // (after a --spill recall), so the layer's score is summed by position.
    std::unordered_map<int32_t, float> by_position;
    for (uint32_t head = 0; head < view.n_kv_head(); ++head) {
      const auto& table = view.table(head);
      for (uint32_t slot = 0; slot < table.high_water(); ++slot)
        if (table.position(slot) >= 0) by_position[table.position(slot)] += scores.at(head, slot);
    }
    evict_lowest_positions(view, excess, [&](int32_t position) { return by_position[position]; });
  }
};

}  // namespace

const Registration& tova_registration() {
  static const Registration r{
      "tova", "drops the token the latest query attends to least (summed over the layer's heads)", kOptions,
      [](const PolicySpec& spec, const PolicyShape& shape) -> std::unique_ptr<EvictionPolicy> {
        return std::make_unique<TovaPolicy>(spec, shape);
      },
      [](uint32_t b) { return fmt::format("tova:budget={}", b); }};
  return r;
}

}  // namespace kvscope::kv::policies
