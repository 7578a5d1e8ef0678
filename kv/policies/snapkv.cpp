// snapkv:budget=B,window=W,kernel=K[,interval=N] — SnapKV (Li et al. 2024):
// each kv head keeps the prompt tokens that an observation window — the last
// W queries — attends to most, pooled over K neighbouring tokens so that a
// kept token brings its neighbours (the clusters attention favours), plus the
// window itself. Per kv head.
//
// Scores: LastQueries(W) — for each slot, the attention of the last W queries
// of the previous forward call, summed over those queries and over the query
// heads sharing the kv head.
//
// Prefill — the prompt is compressed once it outgrows the budget, with the
// observation window being its last W tokens seen so far: before a prompt
// chunk of n tokens, each head evicts its live + n - B lowest tokens by
// pooled window score, never the last W positions (counted after the chunk
// lands) nor pinned ones. A prompt of at most B tokens is never compressed
// (as in SnapKV, which compresses only prompts longer than its capacity);
// for a longer one the compression before the first decode step uses the
// prompt's final window, which is SnapKV's single end-of-prefill compression
// when the prompt fits in one chunk over the budget.
//
// Decode — as kvpress's DecodingPress wraps a scorer press: every N steps
// (`interval`) the cache is re-scored by the attention of a window of recent
// queries and cut back below budget. Here, with the budget a hard cap: the
// decode window score of a slot is the sum of the LastQueries scores of the
// last W forward calls — at the first decode step that is the prompt's final
// window (recorded at on_prefill), then one entry per decoded token, the
// oldest dropped once W are held. When a step would overflow a head, the
// head evicts max(overflow, N) of its lowest pooled-score unprotected tokens
// at once, so evictions happen every N steps. The last W positions and
// pinned tokens are never evicted.
//
// Pooling: max over the K live tokens centred on each one, in position order
// (SnapKV's max_pool1d with kernel K; holes left by evictions are skipped).
#include <algorithm>
#include <deque>

#include "kv/policies/common.h"

namespace kvscope::kv::policies {

namespace {

constexpr PolicyOption kOptions[] = {
    {"budget", OptionKind::Count, true, 0, "live tokens per kv head"},
    {"window", OptionKind::Count, false, 16, "observation window: last queries that score, last tokens kept"},
    {"kernel", OptionKind::Count, false, 5, "pooling width over neighbouring tokens (odd)"},
    {"interval", OptionKind::Count, false, 1, "decode steps between evictions"},
};

class ObservationWindowPolicy final : public EvictionPolicy {
 public:
  ObservationWindowPolicy(std::string_view name, const PolicySpec& spec, const PolicyShape& shape,
                          std::vector<uint32_t> budgets)
      : EvictionPolicy(spec, shape, std::move(budgets)),
        name_(name),
        window_(spec.count("window")),
        kernel_(spec.count("kernel")),
        interval_(spec.count("interval")),
        layers_(shape.n_layer, LayerState{std::vector<std::deque<std::vector<float>>>(shape.n_kv_head), -1}) {}

  std::string_view name() const override { return name_; }
  bool per_head() const override { return true; }
  ScoreRequest score_request() const override { return {ScoreKind::LastQueries, window_}; }
  Protection protection() const override { return {0, window_}; }

  void on_prefill(LayerView& view, const LayerScores& scores) override {
    auto& state = layers_[view.layer()];
    for (auto& ring : state.rings) ring.clear();
    push(view, scores);
    state.last_pushed_step = static_cast<int64_t>(view.step().step);
  }

  void on_step(LayerView& view, const LayerScores& scores) override {
    auto& state = layers_[view.layer()];
    const bool decode = view.step().phase == Phase::Decode;
    if (decode && !scores.empty() && static_cast<int64_t>(view.step().step) - 1 > state.last_pushed_step) {
      push(view, scores);
      state.last_pushed_step = static_cast<int64_t>(view.step().step) - 1;
    }
    for (uint32_t head = 0; head < view.n_kv_head(); ++head) {
      const uint32_t excess = view.excess(head);
      if (excess == 0) continue;
      // Raw score per slot: the previous call's window (prefill) or the sum
      // over the decode window's calls.
      std::vector<float> raw(view.table(head).capacity(), 0.0f);
      if (decode) {
        for (const auto& entry : state.rings[head])
          for (size_t slot = 0; slot < raw.size(); ++slot) raw[slot] += entry[slot];
      } else {
        for (uint32_t slot = 0; slot < raw.size(); ++slot) raw[slot] = scores.at(head, slot);
      }
      const auto pooled = pool(view, head, raw);
      uint32_t count = excess;
      if (decode) count = std::min(std::max(excess, interval_), evictable(view, head));
      const auto before = victims(view, head);
      evict_lowest(view, head, count, [&](uint32_t slot) { return pooled[slot]; });
      // A freed slot's past scores belonged to its old token.
      for (uint32_t slot : before)
        if (view.table(head).position(slot) < 0)
          for (auto& entry : state.rings[head]) entry[slot] = 0.0f;
    }
  }

  void reset() override {
    for (auto& state : layers_) {
      for (auto& ring : state.rings) ring.clear();
      state.last_pushed_step = -1;
    }
  }

 private:
  struct LayerState {
    std::vector<std::deque<std::vector<float>>> rings;  // [kv_head]: up to W calls' scores, [slot] each
    int64_t last_pushed_step;
  };

  void push(const LayerView& view, const LayerScores& scores) {
    auto& state = layers_[view.layer()];
    for (uint32_t head = 0; head < view.n_kv_head(); ++head) {
      auto& ring = state.rings[head];
      std::vector<float> entry(view.table(head).capacity(), 0.0f);
      for (uint32_t slot = 0; slot < entry.size(); ++slot) entry[slot] = scores.at(head, slot);
      ring.push_back(std::move(entry));
      while (ring.size() > std::max(window_, 1u)) ring.pop_front();
    }
  }

  std::vector<float> pool(const LayerView& view, uint32_t head, const std::vector<float>& raw) const {
    const auto order = view.live_slots_by_position(head);
    std::vector<float> pooled(raw.size(), 0.0f);
    const int64_t half = kernel_ / 2, n = static_cast<int64_t>(order.size());
    for (int64_t i = 0; i < n; ++i) {
      float best = raw[order[i]];
      for (int64_t j = std::max<int64_t>(0, i - half); j <= std::min(n - 1, i + half); ++j)
        best = std::max(best, raw[order[j]]);
      pooled[order[i]] = best;
    }
    return pooled;
  }

  static std::vector<uint32_t> victims(const LayerView& view, uint32_t head) {
    std::vector<uint32_t> slots;
    const auto& table = view.table(head);
    for (uint32_t slot = 0; slot < table.high_water(); ++slot)
      if (table.position(slot) >= 0 && !view.is_protected(head, slot)) slots.push_back(slot);
    return slots;
  }
  static uint32_t evictable(const LayerView& view, uint32_t head) {
    return static_cast<uint32_t>(victims(view, head).size());
  }

  std::string name_;
  uint32_t window_, kernel_, interval_;
  std::vector<LayerState> layers_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> make_observation_window_policy(std::string_view name, const PolicySpec& spec,
                                                               const PolicyShape& shape,
                                                               std::vector<uint32_t> budgets) {
  const uint32_t budget = spec.count("budget"), window = spec.count("window"), kernel = spec.count("kernel");
  if (window == 0 || window >= budget)
    throw std::invalid_argument(fmt::format(
        "--policy {}: window ({}) must be at least 1 and smaller than budget ({})", spec.text(), window, budget));
  if (kernel % 2 == 0)
    throw std::invalid_argument(fmt::format("--policy {}: kernel ({}) must be odd (1, 3, 5, ...) so the pool is "
                                            "centred on the token", spec.text(), kernel));
  if (spec.count("interval") == 0)
    throw std::invalid_argument(fmt::format("--policy {}: interval must be at least 1", spec.text()));
  return std::make_unique<ObservationWindowPolicy>(name, spec, shape, std::move(budgets));
}

const Registration& snapkv_registration() {
  static const Registration r{
      "snapkv", "prompt tokens the last W queries attend to most (pooled), per kv head; then the same rule over decode",
      kOptions, [](const PolicySpec& spec, const PolicyShape& shape) -> std::unique_ptr<EvictionPolicy> {
        return make_observation_window_policy("snapkv", spec, shape, uniform_budgets(shape, spec.count("budget")));
      },
      [](uint32_t b) { return fmt::format("snapkv:budget={}", b); }};
  return r;
}

}  // namespace kvscope::kv::policies
