#include "kv/policy_reference.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope::kv {

// ---------------------------------------------------------------- ScoreBuffer

ScoreBuffer::ScoreBuffer(const PolicyShape& shape, ScoreRequest request)
    : shape_(shape),
      request_(request),
      values_(request.kind == ScoreKind::None ? 0 : size_t{shape.n_layer} * shape.n_kv_head * shape.capacity, 0.0f) {}

void ScoreBuffer::begin_call() {
  if (request_.kind == ScoreKind::LastQueries) std::fill(values_.begin(), values_.end(), 0.0f);
}

void ScoreBuffer::slot_assigned(uint32_t layer, uint32_t kv_head, uint32_t slot) {
  if (request_.kind == ScoreKind::Accumulated)
    values_[(size_t{layer} * shape_.n_kv_head + kv_head) * shape_.capacity + slot] = 0.0f;
}

void ScoreBuffer::add(uint32_t layer, uint32_t kv_head, uint32_t index, uint32_t n_queries,
                      std::span<const float> probs) {
  if (request_.kind == ScoreKind::None) return;
  if (request_.kind == ScoreKind::LastQueries && request_.last_queries != 0 &&
      index + request_.last_queries < n_queries)
    return;  // not among the call's last `last_queries` queries
  float* row = values_.data() + (size_t{layer} * shape_.n_kv_head + kv_head) * shape_.capacity;
  for (uint32_t slot = 0; slot < shape_.capacity; ++slot) row[slot] += probs[slot];
}

LayerScores ScoreBuffer::layer(uint32_t layer) const {
  if (values_.empty()) return {};
  const size_t size = size_t{shape_.n_kv_head} * shape_.capacity;
  return {std::span<const float>(values_).subspan(layer * size, size), shape_.capacity};
}

// ---------------------------------------------------------------- PolicyRunner

PolicyRunner::PolicyRunner(EvictionPolicy& policy, const PinnedSpans& pins, AttentionFn attention, uint32_t max_chunk)
    : policy_(&policy),
      pins_(pins),
      attention_(std::move(attention)),
      max_chunk_(std::max(max_chunk, 1u)),
      tables_(size_t{policy.shape().n_layer} * policy.shape().n_kv_head, SlotTable(policy.shape().capacity)),
      scores_(policy.shape(), policy.score_request()),
      log_(TraceHeader{policy.spec().text(), policy.shape().n_layer, policy.shape().n_kv_head,
                       policy.shape().capacity, 1, pins.spans()}) {}

uint32_t PolicyRunner::prefill_room() const {
  const auto& shape = policy_->shape();
  const auto protection = policy_->protection();
  uint32_t room = UINT32_MAX;
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
    for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
      const auto& t = table(layer, head);
      uint32_t kept = 0;  // live tokens the policy may not evict (the recent window moves with the chunk)
      for (uint32_t slot = 0; slot < t.high_water(); ++slot) {
        const int32_t p = t.position(slot);
        if (p >= 0 && (!policy_->evicts() || p < static_cast<int64_t>(protection.sinks) || pins_.contains(p))) ++kept;
      }
      const uint32_t budget = policy_->budget(layer, head);
      room = std::min(room, budget > kept ? budget - kept : 0u);
    }
  return room;
}

void PolicyRunner::prefill(std::span<const int32_t> tokens) {
  size_t fed = 0;
  while (fed < tokens.size()) {
    // A full cache still takes one token, so that step() reports it.
    const size_t n = std::max<size_t>(1, std::min({tokens.size() - fed, size_t{max_chunk_}, size_t{prefill_room()}}));
    step(tokens.subspan(fed, n), Phase::Prefill);
    fed += n;
  }
  if (tokens.empty()) return;
  const auto& shape = policy_->shape();
  const StepInfo info{step_ - 1, Phase::Prefill, next_position(), 0};
  const LayerView::Context context{info, policy_->protection(), &pins_, tokens_, &log_};
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer) {
    LayerView view(layer, std::span(tables_).subspan(size_t{layer} * shape.n_kv_head, shape.n_kv_head),
                   policy_->layer_budgets(layer), context);
    policy_->on_prefill(view, scores_.layer(layer));
  }
}

void PolicyRunner::decode(int32_t token) { step(std::span(&token, 1), Phase::Decode); }

void PolicyRunner::step(std::span<const int32_t> tokens, Phase phase) {
  const auto& shape = policy_->shape();
  const auto n = static_cast<uint32_t>(tokens.size());
  const StepInfo info{step_, phase, next_position(), n};
  const LayerView::Context context{info, policy_->protection(), &pins_, tokens_, &log_};
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer) {
    LayerView view(layer, std::span(tables_).subspan(size_t{layer} * shape.n_kv_head, shape.n_kv_head),
                   policy_->layer_budgets(layer), context);
    policy_->on_step(view, step_ == 0 ? LayerScores{} : scores_.layer(layer));
    for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
      if (view.excess(head) == 0) continue;
      const auto message = fmt::format(
          "step {}: layer {} kv_head {} holds {} tokens; {} more exceed its budget of {}", step_, layer, head,
          view.live(head), n, view.budget(head));
      if (!policy_->evicts()) throw ContextFull(message + " (the context is full; use an evicting --policy)");
      throw std::logic_error(fmt::format("policy {}: {}", policy_->name(), message));
    }
  }

  std::vector<int32_t> positions(n);
  for (uint32_t i = 0; i < n; ++i) positions[i] = next_position() + static_cast<int32_t>(i);
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  log_.written(step_, positions, tokens);
  scores_.begin_call();
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
    for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
      auto& t = tables_[size_t{layer} * shape.n_kv_head + head];
      for (const int32_t position : positions) {
        const int32_t slot = t.assign(position);
        if (slot < 0) throw std::logic_error(fmt::format("step {}: no free slot for position {}", step_, position));
        scores_.slot_assigned(layer, head, static_cast<uint32_t>(slot));
      }
    }

  if (policy_->needs_scores()) {
    std::vector<float> probs(shape.capacity);
    for (uint32_t i = 0; i < n; ++i)
      for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
        for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
          std::fill(probs.begin(), probs.end(), 0.0f);
          attention_(layer, head, positions[i], table(layer, head), probs);
          scores_.add(layer, head, i, n, probs);
        }
  }
  log_.occupancy(step_, tables_);
  if (after_step) after_step(*this, info);
  ++step_;
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
