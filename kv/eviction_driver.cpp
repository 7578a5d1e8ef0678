#include "kv/eviction_driver.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope::kv {

// ---------------------------------------------------------------- ScoreBuffer

ScoreBuffer::ScoreBuffer(const PolicyShape& shape, ScoreRequest request)
    : shape_(shape),
      request_(request),
      values_(request.kind == ScoreKind::None ? 0 : size_t{shape.n_layer} * shape.n_kv_head * shape.capacity, 0.0f) {}

void ScoreBuffer::begin_call() {
  if (request_.kind == ScoreKind::LastQueries) clear();
}

void ScoreBuffer::clear() { std::fill(values_.begin(), values_.end(), 0.0f); }

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

std::span<float> ScoreBuffer::layer_values(uint32_t layer) {
  if (values_.empty()) return {};
  const size_t size = size_t{shape_.n_kv_head} * shape_.capacity;
  return std::span<float>(values_).subspan(layer * size, size);
}

// ------------------------------------------------------------- EvictionDriver

EvictionDriver::EvictionDriver(std::unique_ptr<EvictionPolicy> policy, PinnedSpans pins, uint32_t block_slots)
    : policy_(std::move(policy)),
      pins_(std::move(pins)),
      log_(TraceHeader{policy_ ? policy_->spec().text() : std::string{}, policy_ ? policy_->shape().n_layer : 0,
                       policy_ ? policy_->shape().n_kv_head : 0, policy_ ? policy_->shape().capacity : 0,
                       block_slots, pins_.spans()}),
      scores_(policy_ ? policy_->shape() : PolicyShape{}, policy_ ? policy_->score_request() : ScoreRequest{}) {
  if (!policy_) throw std::invalid_argument("EvictionDriver needs a policy");
}

LayerView EvictionDriver::view(std::span<SlotTable> tables, uint32_t layer, const LayerView::Context& context) const {
  const uint32_t n_kv_head = policy_->shape().n_kv_head;
  return LayerView(layer, tables.subspan(size_t{layer} * n_kv_head, n_kv_head), policy_->layer_budgets(layer),
                   context);
}

uint32_t EvictionDriver::room(std::span<const SlotTable> tables) const {
  const PolicyShape& shape = policy_->shape();
  const uint32_t sinks = policy_->protection().sinks;
  uint32_t room = UINT32_MAX;
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
    for (uint32_t head = 0; head < shape.n_kv_head && !local_layer(layer); ++head) {
      const SlotTable& t = tables[size_t{layer} * shape.n_kv_head + head];
      const uint32_t budget = policy_->budget(layer, head);
      if (!policy_->evicts()) {
        room = std::min({room, t.assignable(), budget > t.live() ? budget - t.live() : 0u});
        continue;
      }
      // Live tokens the policy may not evict; the recent window moves with the step.
      uint32_t kept = 0;
      for (uint32_t slot = 0; slot < t.high_water(); ++slot) {
        const int32_t p = t.position(slot);
        if (p >= 0 && (p < static_cast<int64_t>(sinks) || pins_.contains(p))) ++kept;
      }
      room = std::min(room, budget > kept ? budget - kept : 0u);
    }
  return room;
}

void EvictionDriver::make_room(std::span<SlotTable> tables, uint32_t incoming, int32_t next_position,
                               LayerHook* hook) {
  const StepInfo info{step_, prefill_done_ ? Phase::Decode : Phase::Prefill, next_position, incoming};
  const LayerView::Context context{info, policy_->protection(), &pins_, token_ids_, &log_};
  for (uint32_t layer = 0; layer < policy_->shape().n_layer; ++layer) {
    if (local_layer(layer)) continue;
    LayerView v = view(tables, layer, context);
    if (hook) hook->before(layer);
    policy_->on_step(v, step_ == 0 ? LayerScores{} : scores_.layer(layer));
    if (hook) hook->after(v, incoming);
    for (uint32_t head = 0; head < v.n_kv_head(); ++head) {
      if (v.excess(head) == 0) continue;
      if (!policy_->evicts())
        throw ContextFull(v.live(head), incoming, v.budget(head), "policy full keeps every token");
      throw std::logic_error(fmt::format("policy {}: step {}: layer {} kv head {} holds {} tokens; {} more exceed "
                                         "the budget of {}",
                                         policy_->name(), step_, layer, head, v.live(head), incoming, v.budget(head)));
    }
  }
}

void EvictionDriver::written(std::span<const SlotTable> tables, std::span<const int32_t> positions,
                             std::span<const int32_t> tokens) {
  std::vector<int32_t> ids(positions.size(), -1);
  for (size_t i = 0; i < positions.size(); ++i) {
    const auto p = static_cast<size_t>(positions[i]);
    if (token_ids_.size() <= p) token_ids_.resize(p + 1, -1);
    ids[i] = i < tokens.size() ? tokens[i] : -1;
    token_ids_[p] = ids[i];
  }
  log_.written(step_, positions, ids);
  log_.occupancy(step_, tables);
  ++step_;
}

void EvictionDriver::end_prefill(std::span<SlotTable> tables, LayerHook* hook) {
  if (prefill_done_) return;
  prefill_done_ = true;
  if (step_ == 0) return;
  const StepInfo info{step_ - 1, Phase::Prefill, static_cast<int32_t>(token_ids_.size()), 0};
  const LayerView::Context context{info, policy_->protection(), &pins_, token_ids_, &log_};
  for (uint32_t layer = 0; layer < policy_->shape().n_layer; ++layer) {
    if (local_layer(layer)) continue;
    LayerView v = view(tables, layer, context);
    if (hook) hook->before(layer);
    policy_->on_prefill(v, scores_.layer(layer));
    if (hook) hook->after(v, 0);
  }
}

void EvictionDriver::truncated(int32_t position) {
  log_.truncated(step_, position);
  if (token_ids_.size() > static_cast<size_t>(std::max(position, 0)))
    token_ids_.resize(static_cast<size_t>(std::max(position, 0)));
  policy_->reset();
}

void EvictionDriver::clear() {
  step_ = 0;
  prefill_done_ = false;
  token_ids_.clear();
  policy_->reset();
  log_.clear();
  scores_.clear();
}

uint32_t EvictionDriver::score_first_query(uint32_t n_tokens) const {
  const ScoreRequest r = policy_->score_request();
  if (r.kind != ScoreKind::LastQueries || r.last_queries == 0 || r.last_queries >= n_tokens) return 0;
  return n_tokens - r.last_queries;
}

bool EvictionDriver::scores_accumulate() const {
  return policy_->score_request().kind == ScoreKind::Accumulated;
}

}  // namespace kvscope::kv
