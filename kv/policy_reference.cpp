#include "kv/policy_reference.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope::kv {

// ---------------------------------------------------------------- PolicyRunner

PolicyRunner::PolicyRunner(const EvictionPolicy& like, const PinnedSpans& pins, AttentionFn attention,
                           uint32_t max_chunk)
    : driver_(make_policy(like.spec(), like.shape(), pins), pins, 1),
      attention_(std::move(attention)),
      max_chunk_(std::max(max_chunk, 1u)),
      tables_(size_t{driver_.policy().shape().n_layer} * driver_.policy().shape().n_kv_head,
              SlotTable(driver_.policy().shape().capacity)) {}

void PolicyRunner::prefill(std::span<const int32_t> tokens) {
  size_t fed = 0;
  while (fed < tokens.size()) {
    // A full cache still takes one token, so that the driver reports it.
    const size_t room = driver_.room(tables_);
    const size_t n = std::max<size_t>(1, std::min({tokens.size() - fed, size_t{max_chunk_}, room}));
    step(tokens.subspan(fed, n));
    fed += n;
  }
  if (!tokens.empty()) driver_.end_prefill(tables_);
}

void PolicyRunner::decode(int32_t token) {
  driver_.end_prefill(tables_);  // no-op after the first decode step
  step(std::span(&token, 1));
}

void PolicyRunner::step(std::span<const int32_t> tokens) {
  const PolicyShape& shape = driver_.policy().shape();
  const auto n = static_cast<uint32_t>(tokens.size());
  const StepInfo info{driver_.steps(), driver_.prefill_done() ? Phase::Decode : Phase::Prefill, next_position(), n};
  driver_.make_room(tables_, n, next_position());

  std::vector<int32_t> positions(n);
  for (uint32_t i = 0; i < n; ++i) positions[i] = next_position() + static_cast<int32_t>(i);
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  ScoreBuffer& scores = driver_.scores();
  scores.begin_call();
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
    for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
      auto& t = tables_[size_t{layer} * shape.n_kv_head + head];
      for (const int32_t position : positions) {
        const int32_t slot = t.assign(position);
        if (slot < 0)
          throw std::logic_error(fmt::format("step {}: no free slot for position {}", info.step, position));
        scores.slot_assigned(layer, head, static_cast<uint32_t>(slot));
      }
    }

  if (driver_.policy().needs_scores()) {
    std::vector<float> probs(shape.capacity);
    for (uint32_t i = 0; i < n; ++i)
      for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
        for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
          std::fill(probs.begin(), probs.end(), 0.0f);
          attention_(layer, head, positions[i], table(layer, head), probs);
          scores.add(layer, head, i, n, probs);
        }
  }
  driver_.written(tables_, positions, tokens);
  if (after_step) after_step(*this, info);
}

// ------------------------------------------------------------ random attention

namespace {
uint64_t mix(uint64_t x) {  // splitmix64's finalizer: a good 64-bit hash
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// A deterministic standard-ish normal from a hash (sum of 4 uniforms, centred).
float hashed_normal(uint64_t h) {
  float sum = 0;
  for (int i = 0; i < 4; ++i) {
    h = mix(h);
    sum += static_cast<float>(h >> 40) * 0x1.0p-24f;
  }
  return (sum - 2.0f) * 1.7320508f;
}
}  // namespace

AttentionFn softmax_attention(uint64_t seed, uint32_t group, uint32_t head_dim) {
  return [=](uint32_t layer, uint32_t kv_head, int32_t query_position, const SlotTable& table,
             std::span<float> probs) {
    auto vec = [&](uint64_t kind, uint32_t head, int32_t position, uint32_t d) {
      return hashed_normal(mix(mix(mix(mix(seed ^ kind) ^ layer) ^ head) ^ static_cast<uint32_t>(position)) ^ d);
    };
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    std::vector<uint32_t> visible;
    for (uint32_t slot = 0; slot < table.high_water(); ++slot)
      if (table.position(slot) >= 0 && table.position(slot) <= query_position) visible.push_back(slot);
    std::vector<double> logits(visible.size());
    for (uint32_t g = 0; g < group; ++g) {
      const uint32_t q_head = kv_head * group + g;
      double max_logit = -1e300;
      for (size_t i = 0; i < visible.size(); ++i) {
        double dot = 0;
        for (uint32_t d = 0; d < head_dim; ++d)
          dot += double{vec(1, q_head, query_position, d)} * vec(2, kv_head, table.position(visible[i]), d);
        logits[i] = dot * scale;
        max_logit = std::max(max_logit, logits[i]);
      }
      double total = 0;
      for (auto& l : logits) total += (l = std::exp(l - max_logit));
      for (size_t i = 0; i < visible.size(); ++i) probs[visible[i]] += static_cast<float>(logits[i] / total);
    }
  };
}

AttentionFn random_attention(uint64_t seed) {
  return [seed](uint32_t layer, uint32_t kv_head, int32_t query_position, const SlotTable& table,
                std::span<float> probs) {
    // Heavy-tailed weights (exp of a wide uniform) so that some tokens are
    // clear heavy hitters, as in real attention.
    double total = 0;
    for (uint32_t slot = 0; slot < table.high_water(); ++slot) {
      const int32_t p = table.position(slot);
      if (p < 0 || p > query_position) continue;
      const uint64_t h = mix(mix(mix(mix(seed ^ layer) ^ kv_head) ^ static_cast<uint32_t>(query_position)) ^
                             static_cast<uint32_t>(p));
      const double u = static_cast<double>(h >> 11) * 0x1.0p-53;
      probs[slot] = static_cast<float>(std::exp(8.0 * u));
      total += probs[slot];
    }
    if (total > 0)
      for (auto& v : probs) v = static_cast<float>(v / total);
  };
}

}  // namespace kvscope::kv
