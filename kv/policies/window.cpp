// window:budget=B — keeps the last B tokens: a sliding window, with no
// attention sinks (compare streamingllm, which keeps them).
//
// Prefill and decode alike: before a step writes n tokens, the oldest
// unpinned tokens are evicted until live + n <= B. Pinned tokens count in B,
// so P pinned tokens leave a window of B - P. Every kv head keeps the same
// tokens. Needs no scores.
#include "kv/policies/common.h"

namespace kvscope::kv::policies {

namespace {

constexpr PolicyOption kOptions[] = {
    {"budget", OptionKind::Count, true, 0, "live tokens per layer"},
};

class WindowPolicy final : public EvictionPolicy {
 public:
  WindowPolicy(const PolicySpec& spec, const PolicyShape& shape)
      : EvictionPolicy(spec, shape, uniform_budgets(shape, spec.count("budget"))) {}
  std::string_view name() const override { return "window"; }
  bool per_head() const override { return false; }
  void on_step(LayerView& view, const LayerScores&) override {
    // Equal scores: the tie goes to the older position, so the oldest go first.
    evict_lowest_positions(view, view.excess(0), [](int32_t) { return 0.0f; });
  }
};

}  // namespace

const Registration& window_registration() {
  static const Registration r{
      "window", "keeps the last B tokens", kOptions,
      [](const PolicySpec& spec, const PolicyShape& shape) -> std::unique_ptr<EvictionPolicy> {
        return std::make_unique<WindowPolicy>(spec, shape);
      },
      [](uint32_t b) { return fmt::format("window:budget={}", b); }};
  return r;
}

}  // namespace kvscope::kv::policies
