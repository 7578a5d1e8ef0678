// KvCache's --spill: moving evicted rows to the host tier (kv/spill.h) and
// recalling them.
//
// Per step, in the step's one command buffer:
//   1. record_spill_transfers: the rows of every slot evicted since the last
//      step (the policy's, and those displaced by recalls) are copied to a
//      readback buffer — before this step's writes reuse the slots — then
//      the recalled rows are copied from an upload buffer into their slots.
//   2. record_spill_query, after each layer's attention: the last token's
//      query heads, its softmax rows and its own key rows are copied out.
//   3. spill_step_done (after the submit): the evicted rows enter the tier.
// At the next single-token step, the driver's SpillHook calls recall() for
// every layer after the policy's evictions. The query is the previous step's (one step
// of lag: the current token's query does not exist before the step runs).
// For each query head, log_z (the log of its softmax denominator) comes from
// its own key: p_self = exp(scale * q.k_self - log_z). A spilled entry's
// attention probability is then exp(scale * q.k - log_z), bounded per block
// by the key bounds; it is recalled when it beats the weakest live entry
// (by the same query's probabilities, summed over the query heads of the kv
// head, and over the layer's kv heads for policies that keep the same tokens
// in every head), which goes to the tier in its place.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include <fmt/format.h>

#include "kv/cache.h"
#include "kv/event_log.h"
#include "kv/eviction_driver.h"
#include "kv/policy.h"
#include "kv/spill.h"

namespace kvscope::kv {

namespace {
// Recalls per (layer, unit of heads) and step: bounds the upload per step.
constexpr uint32_t kMaxRecallsPerStep = 8;
}  // namespace

void KvCache::SpillHook::before(uint32_t layer) { before_ = cache_->snapshot_positions(layer); }

void KvCache::SpillHook::after(LayerView& view, uint32_t incoming) {
  cache_->queue_evicted(view.layer(), before_);
  if (incoming == 1) cache_->recall(view);
}

std::vector<std::vector<int32_t>> KvCache::snapshot_positions(uint32_t layer) const {
  std::vector<std::vector<int32_t>> before(shape_.n_kv_head);
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
    auto p = table(layer, h).positions();
    before[h].assign(p.begin(), p.end());
  }
  return before;
}

void KvCache::queue_evicted(uint32_t layer, const std::vector<std::vector<int32_t>>& before) {
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
    const SlotTable& t = table(layer, h);
    for (uint32_t s = 0; s < t.capacity(); ++s) {
      const int32_t p = before[h][s];
      if (p < 0 || t.position(s) == p) continue;
      const auto ids = eviction_->token_ids();
      const int32_t token = static_cast<size_t>(p) < ids.size() ? ids[p] : -1;
      spill_out_pending_.push_back({layer, h, s, p, token});
    }
  }
}

void KvCache::recall(LayerView& view) {
  if (!spill_query_valid_) return;
  const uint32_t l = view.layer(), H = shape_.n_kv_head, hd = shape_.head_dim;
  const uint32_t n_head = spill_n_head_, group = n_head / H, cap = config_.capacity;
  const float scale = 1.0f / std::sqrt(float(hd));
  const auto* base = static_cast<const uint8_t*>(spill_query_.mapped()) + l * spill_query_stride_;
  const auto* q = reinterpret_cast<const float*>(base);
  const auto* probs = q + size_t{n_head} * hd;
  const auto* self_keys = reinterpret_cast<const uint32_t*>(probs + size_t{n_head} * cap);

  // log_z per query head, from its own key's probability.
  std::vector<float> log_z(n_head), key(hd);
  for (uint32_t h = 0; h < H; ++h) {
    const int32_t self_slot = query_slots_[size_t{l} * H + h];
    if (self_slot < 0) return;
    decode_row(key_layout_, {self_keys + size_t{h} * key_layout_.row_words, key_layout_.row_words}, key);
    for (uint32_t qh = h * group; qh < (h + 1) * group; ++qh) {
      float dot = 0;
      for (uint32_t c = 0; c < hd; ++c) dot += q[size_t{qh} * hd + c] * key[c];
      const float p_self = probs[size_t{qh} * cap + self_slot];
      if (!(p_self > 0)) return;  // underflowed: no reference for this step
      log_z[qh] = scale * dot - std::log(p_self);
    }
  }
  auto live_probability = [&](uint32_t h, uint32_t slot) {
    float p = 0;
    for (uint32_t qh = h * group; qh < (h + 1) * group; ++qh) p += probs[size_t{qh} * cap + slot];
    return p;
  };

  std::vector<std::vector<uint32_t>> units;  // heads that keep the same tokens
  if (eviction_->policy().per_head())
    for (uint32_t h = 0; h < H; ++h) units.push_back({h});
  else
    units.emplace_back(), units.back().resize(H), std::iota(units.back().begin(), units.back().end(), 0u);

  for (const auto& unit : units) {
    // The live entries the policy could evict, weakest first (by position).
    std::unordered_map<int32_t, float> live_score;
    for (uint32_t h : unit) {
      const SlotTable& t = view.table(h);
      for (uint32_t s = 0; s < t.high_water(); ++s) {
        const int32_t p = t.position(s);
        if (p >= 0 && !view.is_protected_position(p)) live_score[p] += live_probability(h, s);
      }
    }
    std::vector<SpillTier::Scored> weakest;
    for (auto [p, score] : live_score) weakest.push_back({p, score});
    if (weakest.empty()) continue;
    std::sort(weakest.begin(), weakest.end(), [](const auto& a, const auto& b) {
      return a.score != b.score ? a.score < b.score : a.position < b.position;
    });
    // Spilled entries that beat the weakest: any head's share must beat its share.
    const float threshold = weakest.front().score;
    std::unordered_map<int32_t, float> candidate_score;
    for (uint32_t h : unit) {
      const std::span<const float> queries(q + size_t{h} * group * hd, size_t{group} * hd);
      const std::span<const float> lz(log_z.data() + h * group, group);
      for (const auto& c : spill_->candidates(l, h, queries, lz, scale, threshold / float(unit.size())))
        candidate_score.emplace(c.position, 0.0f);
    }
    for (uint32_t h : unit) {  // exact scores, summed over the unit's heads
      const std::span<const float> queries(q + size_t{h} * group * hd, size_t{group} * hd);
      const std::span<const float> lz(log_z.data() + h * group, group);
      for (auto& [p, total] : candidate_score) {
        const SpilledEntry* e = spill_->find(l, h, p);
        if (!e) {
          total = -1;  // not spilled in every head of the unit
          continue;
        }
        if (total < 0) continue;
        for (uint32_t qh = 0; qh < group; ++qh) {
          float dot = 0;
          for (uint32_t c = 0; c < hd; ++c) dot += queries[size_t{qh} * hd + c] * e->key[c];
          total += std::exp(scale * dot - lz[qh]);
        }
      }
    }
    std::vector<SpillTier::Scored> best;
    for (auto [p, score] : candidate_score)
      if (score > threshold) best.push_back({p, score});
    std::sort(best.begin(), best.end(), [](const auto& a, const auto& b) {
      return a.score != b.score ? a.score > b.score : a.position < b.position;
    });
    // Swap pairwise while the recalled entry beats the one it displaces.
    const size_t n_swaps = std::min<size_t>({best.size(), weakest.size(), kMaxRecallsPerStep});
    for (size_t i = 0; i < n_swaps && best[i].score > weakest[i].score; ++i) {
      for (uint32_t h : unit) {
        const int32_t old_slot = view.slot_of(h, weakest[i].position);
        ScoreBuffer& scores = eviction_->scores();
        const float inherited = scores.layer(l).at(h, uint32_t(old_slot));
        const auto ids = eviction_->token_ids();
        const int32_t old_token =
            static_cast<size_t>(weakest[i].position) < ids.size() ? ids[weakest[i].position] : -1;
        spill_out_pending_.push_back({l, h, uint32_t(old_slot), weakest[i].position, old_token});
        view.evict(h, uint32_t(old_slot), weakest[i].score);
        SpilledEntry e = spill_->take(l, h, best[i].position);
        const int32_t slot = tables_[size_t{l} * H + h].assign(e.position);
        if (slot < 0) throw std::logic_error("spill: no slot for a recall right after an eviction");
        RecallEvent r;
        r.step = eviction_->steps(), r.layer = l, r.kv_head = h, r.slot = uint32_t(slot);
        r.position = e.position, r.token = e.token, r.score = best[i].score;
        eviction_->log().recalled(r);
        // The recalled slot ranks as the entry it displaced did (accumulated
        // scores would otherwise carry the slot's previous occupant's).
        if (!scores.values().empty()) {
          scores.layer_values(l)[size_t{h} * cap + uint32_t(slot)] = inherited;
          scores_.write_as<float>(std::span<const float>(&inherited, 1),
                                  l * scores_stride_ + (size_t{h} * cap + uint32_t(slot)) * 4);
        }
        spill_in_pending_.push_back({l, h, uint32_t(slot), e.position, e.token});
        spill_in_words_.insert(spill_in_words_.end(), e.key_words.begin(), e.key_words.end());
        spill_in_words_.insert(spill_in_words_.end(), e.value_words.begin(), e.value_words.end());
        ++recalls_;
      }
    }
  }
}

void KvCache::record_spill_transfers(gpu::Recorder& rec) {
  if (!spill_ || (spill_out_pending_.empty() && spill_in_pending_.empty())) return;
  const uint64_t k_row = uint64_t{key_layout_.row_words} * 4, v_row = uint64_t{value_layout_.row_words} * 4;
  auto ensure = [&](gpu::Buffer& buffer, uint64_t bytes, gpu::MemoryUse use, const char* label) {
    if (buffer.size() < bytes) buffer = gpu::Buffer(*ctx_, std::max<uint64_t>(bytes * 2, 4096), use, label);
  };
  // One copy command per layer and direction for keys, one for values.
  std::vector<std::vector<gpu::Recorder::CopyRange>> k_ranges(shape_.n_layer), v_ranges(shape_.n_layer);
  auto flush = [&](bool out, const gpu::Buffer& staging) {
    for (uint32_t l = 0; l < shape_.n_layer; ++l) {
      if (out) {
        rec.copy(keys_[l], staging, k_ranges[l]);
        rec.copy(values_[l], staging, v_ranges[l]);
      } else {
        rec.copy(staging, keys_[l], k_ranges[l]);
        rec.copy(staging, values_[l], v_ranges[l]);
      }
      k_ranges[l].clear();
      v_ranges[l].clear();
    }
    rec.barrier();
  };
  if (!spill_out_pending_.empty()) {
    ensure(spill_out_, spill_out_pending_.size() * (k_row + v_row), gpu::MemoryUse::Readback, "kv spill out");
    uint64_t at = 0;
    for (const SpillMove& m : spill_out_pending_) {
      k_ranges[m.layer].push_back({key_layout_.row_offset(m.kv_head, m.slot) * 4, at, k_row});
      v_ranges[m.layer].push_back({value_layout_.row_offset(m.kv_head, m.slot) * 4, at + k_row, v_row});
      at += k_row + v_row;
    }
    flush(true, spill_out_);  // the rows are out before a recall or this step's writes reuse their slots
  }
  if (!spill_in_pending_.empty()) {
    ensure(spill_in_, spill_in_words_.size() * 4, gpu::MemoryUse::Upload, "kv spill in");
    spill_in_.write_as<uint32_t>(spill_in_words_);
    uint64_t at = 0;
    for (const SpillMove& m : spill_in_pending_) {
      k_ranges[m.layer].push_back({at, key_layout_.row_offset(m.kv_head, m.slot) * 4, k_row});
      v_ranges[m.layer].push_back({at + k_row, value_layout_.row_offset(m.kv_head, m.slot) * 4, v_row});
      at += k_row + v_row;
    }
    flush(false, spill_in_);
    spill_in_pending_.clear();
    spill_in_words_.clear();
  }
}

void KvCache::record_spill_query(gpu::Recorder& rec, uint32_t layer, uint32_t n_head, const gpu::Buffer& qkv,
                                 uint64_t q_offset, const gpu::Buffer& probs, uint64_t probs_offset) {
  if (!spill_) return;
  const uint64_t q_bytes = uint64_t{n_head} * shape_.head_dim * 4, probs_bytes = uint64_t{n_head} * config_.capacity * 4;
  const uint64_t k_row = uint64_t{key_layout_.row_words} * 4;
  if (spill_query_stride_ == 0 || spill_n_head_ != n_head) {
    spill_n_head_ = n_head;
    spill_query_stride_ = (q_bytes + probs_bytes + k_row * shape_.n_kv_head + 255) / 256 * 256;
    spill_query_ = gpu::Buffer(*ctx_, spill_query_stride_ * shape_.n_layer, gpu::MemoryUse::Readback,
                               "kv spill query");
    spill_query_valid_ = false;
  }
  const uint64_t at = layer * spill_query_stride_;
  rec.copy(qkv, q_offset, spill_query_, at, q_bytes);
  rec.copy(probs, probs_offset, spill_query_, at + q_bytes, probs_bytes);
  std::vector<gpu::Recorder::CopyRange> self_keys;
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
    const int32_t slot = last_slots_[size_t{layer} * shape_.n_kv_head + h];
    if (slot >= 0)
      self_keys.push_back({key_layout_.row_offset(h, uint32_t(slot)) * 4, at + q_bytes + probs_bytes + h * k_row, k_row});
  }
  rec.copy(keys_[layer], spill_query_, self_keys);
}

void KvCache::spill_step_done() {
  const uint32_t k_words = key_layout_.row_words, v_words = value_layout_.row_words;
  if (!spill_out_pending_.empty()) {
    const auto* words = static_cast<const uint32_t*>(spill_out_.mapped());
    size_t at = 0;
    for (const SpillMove& m : spill_out_pending_) {
      // A position evicted again before its rows left the device is spilled once.
      if (!spill_->contains(m.layer, m.kv_head, m.position))
        spill_->add(m.layer, m.kv_head, m.position, m.token, {words + at, k_words}, {words + at + k_words, v_words});
      at += k_words + v_words;
    }
    spill_out_pending_.clear();
  }
  query_slots_ = last_slots_;
  spill_query_valid_ = spill_query_stride_ != 0;
}

}  // namespace kvscope::kv
