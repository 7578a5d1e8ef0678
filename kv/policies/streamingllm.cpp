// streamingllm:sinks=S,window=W[,rolling] — StreamingLLM (Xiao et al. 2023):
// the first S tokens (the "attention sinks" that soak up attention a softmax
// must put somewhere) plus the last W tokens; budget B = S + W.
//
// Prefill and decode alike: before a step writes n tokens, the oldest tokens
// that are neither sinks nor pinned are evicted until live + n <= S + W.
// Pinned tokens count in the budget, so they shorten the window. Every kv
// head keeps the same tokens. Needs no scores.
//
// `rolling` asks the forward pass to keep keys un-rotated and apply RoPE at
// cache-relative positions (slot order), so generation can continue past the
// trained context, as the paper does. The policy itself decides the same
// evictions either way; rolling() tells the cache and the forward pass.
#include "kv/policies/common.h"

namespace kvscope::kv::policies {

namespace {

constexpr PolicyOption kOptions[] = {
    {"sinks", OptionKind::Count, false, 4, "first tokens always kept"},
    {"window", OptionKind::Count, true, 0, "most recent tokens kept"},
    {"rolling", OptionKind::Flag, false, 0, "RoPE at cache-relative positions (generate past the context)"},
};

class StreamingLlmPolicy final : public EvictionPolicy {
 public:
  StreamingLlmPolicy(const PolicySpec& spec, const PolicyShape& shape)
      : EvictionPolicy(spec, shape, uniform_budgets(shape, spec.count("sinks") + spec.count("window"))),
        sinks_(spec.count("sinks")),
        rolling_(spec.flag("rolling")) {}
  std::string_view name() const override { return "streamingllm"; }
  bool per_head() const override { return false; }
  Protection protection() const override { return {sinks_, 0}; }
  bool rolling() const { return rolling_; }
  void on_step(LayerView& view, const LayerScores&) override {
    // Sinks are protected; among the rest, equal scores evict the oldest first.
    evict_lowest_positions(view, view.excess(0), [](int32_t) { return 0.0f; });
  }

 private:
  uint32_t sinks_;
  bool rolling_;
};

}  // namespace

const Registration& streamingllm_registration() {
  static const Registration r{
      "streamingllm", "S attention sinks + the last W tokens (budget S + W)", kOptions,
      [](const PolicySpec& spec, const PolicyShape& shape) -> std::unique_ptr<EvictionPolicy> {
        if (spec.count("window") == 0)
          throw std::invalid_argument(fmt::format("--policy {}: window must be at least 1", spec.text()));
        return std::make_unique<StreamingLlmPolicy>(spec, shape);
      },
      [](uint32_t b) { return fmt::format("streamingllm:sinks=4,window={}", b > 4 ? b - 4 : 1); }};
  return r;
}

}  // namespace kvscope::kv::policies
