#include "app/core/lost_attention.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "app/core/evaluation.h"
#include "models/forward.h"

namespace kvscope {

HeldPositions held_positions(const kv::KvCache& cache, uint32_t n_positions) {
  HeldPositions out;
  out.n_layer = cache.shape().n_layer;
  out.n_kv_head = cache.shape().n_kv_head;
  out.n_positions = n_positions;
  out.held.assign(size_t{out.n_layer} * out.n_kv_head * n_positions, 0);
  for (uint32_t l = 0; l < out.n_layer; ++l)
    for (uint32_t h = 0; h < out.n_kv_head; ++h) {
      uint8_t* row = out.held.data() + (size_t{l} * out.n_kv_head + h) * n_positions;
      for (int32_t p : cache.table(l, h).positions())
        if (p >= 0 && static_cast<uint32_t>(p) < n_positions) row[p] = 1;
    }
  return out;
}

AttentionRows probe_attention_rows(const AttentionProbe& probe, const LlamaConfig& cfg, const kv::KvCache& cache,
                                   uint32_t n_positions) {
  if (probe.position() < 0)
    throw std::logic_error("probe_attention_rows: the last forward call read no attention probe; "
                           "set the session's attention_probe().on before it");
  AttentionRows out;
  out.n_layer = cfg.n_layer;
  out.n_head = cfg.n_head;
  out.n_positions = n_positions;
  out.probs.assign(size_t{cfg.n_layer} * cfg.n_head * n_positions, 0.0f);
  const uint32_t heads_per_kv = cfg.n_head / cfg.n_kv_head;
  const uint32_t capacity = cache.capacity();
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    const std::span<const float> row = probe.row(l);  // [n_head][capacity], by slot
    for (uint32_t h = 0; h < cfg.n_head; ++h) {
      const kv::SlotTable& table = cache.table(l, h / heads_per_kv);
      float* dst = out.probs.data() + (size_t{l} * cfg.n_head + h) * n_positions;
      // Slots past the high-water mark were never written this sequence: the
      // shader leaves their probabilities unspecified, so they are skipped.
      for (uint32_t s = 0; s < table.high_water(); ++s) {
        const int32_t p = table.position(s);
        if (p >= 0 && static_cast<uint32_t>(p) < n_positions) dst[p] = row[size_t{h} * capacity + s];
      }
    }
  }
  return out;
}

namespace {

void check_shapes(const AttentionRows& baseline, const HeldPositions& test) {
  if (baseline.n_layer != test.n_layer || baseline.n_positions != test.n_positions || test.n_kv_head == 0 ||
      baseline.n_head % test.n_kv_head != 0 ||
      baseline.probs.size() != size_t{baseline.n_layer} * baseline.n_head * baseline.n_positions ||
      test.held.size() != size_t{test.n_layer} * test.n_kv_head * test.n_positions)
    throw std::invalid_argument(fmt::format(
        "lost attention: baseline rows are {} layers x {} heads x {} positions ({} values) and the test cache's "
        "held positions {} layers x {} kv heads x {} positions ({} values); they must describe the same model "
        "and step",
        baseline.n_layer, baseline.n_head, baseline.n_positions, baseline.probs.size(), test.n_layer,
        test.n_kv_head, test.n_positions, test.held.size()));
}

// Calls lost(layer, position, mass) for each position the test cache does
// not hold, with the baseline's mass on it averaged over the layer's heads.
template <typename F>
void for_each_lost(const AttentionRows& baseline, const HeldPositions& test, F&& lost) {
  const uint32_t heads_per_kv = baseline.n_head / test.n_kv_head;
  for (uint32_t l = 0; l < baseline.n_layer; ++l)
    for (uint32_t h = 0; h < baseline.n_head; ++h)
      for (uint32_t p = 0; p < baseline.n_positions; ++p) {
        const float prob = baseline.at(l, h, p);
        if (prob != 0.0f && !test.at(l, h / heads_per_kv, p)) lost(l, p, double(prob) / baseline.n_head);
      }
}

}  // namespace

std::vector<double> lost_attention(const AttentionRows& baseline, const HeldPositions& test) {
  check_shapes(baseline, test);
  std::vector<double> per_layer(baseline.n_layer, 0.0);
  for_each_lost(baseline, test, [&](uint32_t layer, uint32_t, double mass) { per_layer[layer] += mass; });
  return per_layer;
}

std::vector<double> LostAttentionAccumulator::add(const AttentionRows& baseline, const HeldPositions& test,
                                                  std::span<const int32_t> tokens, uint32_t sequence) {
  check_shapes(baseline, test);
  std::vector<double> per_layer(baseline.n_layer, 0.0);
  const double layer_share = 1.0 / baseline.n_layer;
  for_each_lost(baseline, test, [&](uint32_t layer, uint32_t position, double mass) {
    per_layer[layer] += mass;
    Lost& entry = by_position_[Key{sequence, static_cast<int32_t>(position)}];
    entry.mass += mass * layer_share;
    if (position < tokens.size()) entry.token = tokens[position];
  });
  if (layer_sums_.size() < per_layer.size()) layer_sums_.resize(per_layer.size(), 0.0);
  double sum = 0;
  for (size_t l = 0; l < per_layer.size(); ++l) {
    layer_sums_[l] += per_layer[l];
    sum += per_layer[l];
  }
  step_means_.push_back(per_layer.empty() ? 0.0 : sum / double(per_layer.size()));
  return per_layer;
}

void LostAttentionAccumulator::add_nothing_lost(uint32_t n_layer) {
  if (layer_sums_.size() < n_layer) layer_sums_.resize(n_layer, 0.0);
  step_means_.push_back(0.0);
}

LostAttentionSummary LostAttentionAccumulator::summary(size_t top) const {
  LostAttentionSummary s;
  s.steps = step_means_.size();
  if (s.steps == 0) return s;
  double sum = 0;
  for (double m : step_means_) sum += m;
  s.mean = sum / double(s.steps);
  s.p99 = eval_stats::quantile(step_means_, 0.99);
  s.max = *std::max_element(step_means_.begin(), step_means_.end());
  for (double l : layer_sums_) s.per_layer.push_back(l / double(s.steps));
  for (const auto& [key, lost] : by_position_)
    s.regretted.push_back({key.sequence, key.position, lost.token, lost.mass});
  // Most mass first; ties by sequence then position, so the list is stable.
  std::stable_sort(s.regretted.begin(), s.regretted.end(),
                   [](const RegrettedEviction& a, const RegrettedEviction& b) { return a.lost_mass > b.lost_mass; });
  if (s.regretted.size() > top) s.regretted.resize(top);
  return s;
}

}  // namespace kvscope
