// full — keeps every token; the baseline every other policy is measured against.
//
// Prefill and decode: evicts nothing. Its budget is the cache's capacity,
// so once the context is full the next step cannot run: the driver throws
// kv::ContextFull, with the numbers, instead of dropping anything. To evict
// once the context is full instead, the command line's `--on-full SPEC`
// replaces `full` with SPEC at a budget of the whole context, which keeps
// everything until then (kv::check_on_full_policy).
#include "kv/policies/common.h"

namespace kvscope::kv::policies {

namespace {

class FullPolicy final : public EvictionPolicy {
 public:
  FullPolicy(const PolicySpec& spec, const PolicyShape& shape)
      : EvictionPolicy(spec, shape, uniform_budgets(shape, shape.capacity)) {}
  std::string_view name() const override { return "full"; }
  bool evicts() const override { return false; }
  bool per_head() const override { return false; }
  void on_step(LayerView&, const LayerScores&) override {}
};

}  // namespace

const Registration& full_registration() {
  static const Registration r{
      "full", "keeps every token (until the context is full)", {},
      [](const PolicySpec& spec, const PolicyShape& shape) -> std::unique_ptr<EvictionPolicy> {
        return std::make_unique<FullPolicy>(spec, shape);
      }};
  return r;
}

}  // namespace kvscope::kv::policies
