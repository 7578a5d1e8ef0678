// h2o:budget=B,recent=R — Heavy-Hitter Oracle (Zhang et al. 2023): the R
// most recent tokens plus the B - R "heavy hitters", the tokens that have
// received the most attention so far. Per kv head: each head keeps its own.
//
// Scores: Accumulated — for each slot, the attention probability every query
// since its token was written has put on it, summed over the query heads
// sharing the kv head (the prompt's queries included).
// Prefill and decode alike: before a step writes n tokens, each head evicts
// its lowest-scoring tokens that are not among the last R (counted after the
// n land), not pinned, until live + n <= B. Ties: the older token goes. In
// the first prompt chunk nothing is live, so the prompt is scored by its own
// queries from the second chunk on.
#include "kv/policies/common.h"

namespace kvscope::kv::policies {

namespace {

constexpr PolicyOption kOptions[] = {
    {"budget", OptionKind::Count, true, 0, "live tokens per kv head"},
    {"recent", OptionKind::Count, false, 32, "most recent tokens always kept"},
};

class H2oPolicy final : public EvictionPolicy {
 public:
  H2oPolicy(const PolicySpec& spec, const PolicyShape& shape)
      : EvictionPolicy(spec, shape, uniform_budgets(shape, spec.count("budget"))), recent_(spec.count("recent")) {}
  std::string_view name() const override { return "h2o"; }
  bool per_head() const override { return true; }
  ScoreRequest score_request() const override { return {ScoreKind::Accumulated, 0}; }
  Protection protection() const override { return {0, recent_}; }
  void on_step(LayerView& view, const LayerScores& scores) override {
    for (uint32_t head = 0; head < view.n_kv_head(); ++head)
      evict_lowest(view, head, view.excess(head), [&](uint32_t slot) { return scores.at(head, slot); });
  }

 private:
  uint32_t recent_;
};

}  // namespace

const Registration& h2o_registration() {
  static const Registration r{
      "h2o", "the last R tokens + the most-attended ones (attention accumulated over all steps), per kv head",
      kOptions, [](const PolicySpec& spec, const PolicyShape& shape) -> std::unique_ptr<EvictionPolicy> {
        if (spec.count("recent") >= spec.count("budget"))
          throw std::invalid_argument(fmt::format(
              "--policy {}: recent ({}) must be smaller than budget ({}) to leave room for heavy hitters",
              spec.text(), spec.count("recent"), spec.count("budget")));
        return std::make_unique<H2oPolicy>(spec, shape);
      },
      [](uint32_t b) { return fmt::format("h2o:budget={},recent={}", b, b / 2); }};
  return r;
}

}  // namespace kvscope::kv::policies
