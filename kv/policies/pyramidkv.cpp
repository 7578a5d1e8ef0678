// pyramidkv:budget=B,window=W,kernel=K[,interval=N,beta=20] — PyramidKV
// (Cai et al. 2024): SnapKV's scoring and decode rule (kv/policies/snapkv.cpp,
// stated there for prefill and for each decode step), with budgets that
// shrink from the lowest layer to the highest, because lower layers spread
// their attention widely and upper ones concentrate it on few tokens.
//
// Budgets, as the paper's reference code computes them, averaging B over the
// layers: with L layers,
//   min = floor((B - W) / beta),  max = 2 (B - W) - min,
//   step = floor((max - min) / (L - 1)),
//   budget(layer l) = W + max - l * step   (layer 0 the largest),
// each capped at the cache's capacity (which then lowers the average). A
// single-layer model gets B. Every kv head of a layer has its layer's budget.
#include <cmath>

#include "kv/policies/common.h"

namespace kvscope::kv::policies {

namespace {

constexpr PolicyOption kOptions[] = {
    {"budget", OptionKind::Count, true, 0, "mean live tokens per kv head over the layers"},
    {"window", OptionKind::Count, false, 16, "observation window: last queries that score, last tokens kept"},
    {"kernel", OptionKind::Count, false, 5, "pooling width over neighbouring tokens (odd)"},
    {"interval", OptionKind::Count, false, 1, "decode steps between evictions"},
    {"beta", OptionKind::Number, false, 20, "how steep the pyramid is: the top layer keeps W + (B - W) / beta"},
};

}  // namespace

std::vector<uint32_t> pyramid_budgets(const PolicySpec& spec, const PolicyShape& shape) {
  const uint32_t budget = spec.count("budget"), window = spec.count("window");
  if (window >= budget || shape.n_layer <= 1) return uniform_budgets(shape, budget);
  const int64_t spread = budget - window;
  const int64_t min_extra = static_cast<int64_t>(std::floor(spread / spec.number("beta")));
  const int64_t max_extra = 2 * spread - min_extra;
  const int64_t step = (max_extra - min_extra) / (shape.n_layer - 1);
  std::vector<uint32_t> budgets;
  budgets.reserve(size_t{shape.n_layer} * shape.n_kv_head);
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer) {
    const int64_t b = std::min<int64_t>(window + max_extra - int64_t{layer} * step, shape.capacity);
    budgets.insert(budgets.end(), shape.n_kv_head, static_cast<uint32_t>(b));
  }
  return budgets;
}

const Registration& pyramidkv_registration() {
  static const Registration r{
      "pyramidkv", "SnapKV with budgets shrinking from lower to upper layers (mean B)", kOptions,
      [](const PolicySpec& spec, const PolicyShape& shape) -> std::unique_ptr<EvictionPolicy> {
        return make_observation_window_policy("pyramidkv", spec, shape, pyramid_budgets(spec, shape));
      },
      [](uint32_t b) { return fmt::format("pyramidkv:budget={}", b); }};
  return r;
}

}  // namespace kvscope::kv::policies
