#include "kv/spill.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope::kv {

void KeyBounds::include(std::span<const float> key) {
  if (min.empty()) {
    min.assign(key.begin(), key.end());
    max.assign(key.begin(), key.end());
    return;
  }
  for (size_t c = 0; c < key.size(); ++c) {
    min[c] = std::min(min[c], key[c]);
    max[c] = std::max(max[c], key[c]);
  }
}

float KeyBounds::logit_bound(std::span<const float> q) const {
  // Each term bounds q_c * k_c over k_c in [min_c, max_c]: the product is
  // linear in k_c, so its largest value is at one end.
  float bound = 0;
  for (size_t c = 0; c < q.size(); ++c) bound += std::max(q[c] * min[c], q[c] * max[c]);
  return bound;
}

SpillTier::SpillTier(uint32_t n_layer, uint32_t n_kv_head, const TensorLayout& key_layout,
                     const TensorLayout& value_layout, uint64_t max_bytes, uint32_t block_tokens)
    : n_layer_(n_layer),
      n_kv_head_(n_kv_head),
      head_dim_(key_layout.head_dim),
      block_tokens_(std::max(block_tokens, 1u)),
      key_layout_(key_layout),
      value_layout_(value_layout),
      max_bytes_(max_bytes),
      heads_(size_t{n_layer} * n_kv_head) {
  if (key_layout.encoding == Encoding::Q2Channel || value_layout.encoding == Encoding::Q2Channel)
    throw std::invalid_argument(
        "--spill needs keys stored one row per token; kivi2 keys are quantized per channel over blocks of "
        "tokens, so an evicted key has no row of its own: choose another key format (--kv-k f16, q8 or q4)");
}

uint64_t SpillTier::entry_bytes() const {
  return uint64_t{key_layout_.row_words + value_layout_.row_words} * 4 + uint64_t{head_dim_} * 4 + 2 * 4;
}

void SpillTier::add(uint32_t layer, uint32_t kv_head, int32_t position, int32_t token,
                    std::span<const uint32_t> key_words, std::span<const uint32_t> value_words) {
  if (layer >= n_layer_ || kv_head >= n_kv_head_)
    throw std::out_of_range(fmt::format("spill: layer {} kv head {} outside {} x {}", layer, kv_head, n_layer_,
                                        n_kv_head_));
  if (key_words.size() != key_layout_.row_words || value_words.size() != value_layout_.row_words)
    throw std::invalid_argument(fmt::format("spill: rows of {} and {} words, the cache's are {} and {}",
                                            key_words.size(), value_words.size(), key_layout_.row_words,
                                            value_layout_.row_words));
  Head& h = head(layer, kv_head);
  if (h.entries.count(position)) throw std::logic_error(fmt::format("spill: position {} is already spilled", position));
  SpilledEntry e{position, token, {key_words.begin(), key_words.end()}, {value_words.begin(), value_words.end()},
                 std::vector<float>(head_dim_)};
  decode_row(key_layout_, e.key_words, e.key);
  if (h.blocks.empty() || h.blocks.back().positions.size() >= block_tokens_) h.blocks.emplace_back();
  Block& block = h.blocks.back();
  block.positions.push_back(position);
  block.bounds.include(e.key);
  h.entries.emplace(position, std::move(e));
  ++entries_;
  bytes_ += entry_bytes();
  while (max_bytes_ > 0 && bytes_ > max_bytes_) drop_oldest();
  peak_bytes_ = std::max(peak_bytes_, bytes_);
}

void SpillTier::drop_oldest() {
  // The head whose oldest block is oldest overall is not tracked; dropping
  // from the head holding the most entries keeps heads even, which is what
  // matters for a cap.
  Head* fullest = nullptr;
  for (Head& h : heads_)
    if (!h.blocks.empty() && (!fullest || h.entries.size() > fullest->entries.size())) fullest = &h;
  if (!fullest) return;
  for (int32_t p : fullest->blocks.front().positions) {
    if (fullest->entries.erase(p)) {
      --entries_;
      bytes_ -= entry_bytes();
      ++dropped_;
    }
  }
  fullest->blocks.pop_front();
}

bool SpillTier::contains(uint32_t layer, uint32_t kv_head, int32_t position) const {
  return head(layer, kv_head).entries.count(position) != 0;
}

const SpilledEntry* SpillTier::find(uint32_t layer, uint32_t kv_head, int32_t position) const {
  const auto& entries = head(layer, kv_head).entries;
  const auto it = entries.find(position);
  return it == entries.end() ? nullptr : &it->second;
}

SpilledEntry SpillTier::take(uint32_t layer, uint32_t kv_head, int32_t position) {
  Head& h = head(layer, kv_head);
  const auto it = h.entries.find(position);
  if (it == h.entries.end())
    throw std::out_of_range(fmt::format("spill: position {} of layer {} kv head {} is not spilled", position, layer,
                                        kv_head));
  SpilledEntry e = std::move(it->second);
  h.entries.erase(it);
  --entries_;
  bytes_ -= entry_bytes();
  // Drop wholly recalled blocks at the front; others keep their (still valid) bounds.
  while (!h.blocks.empty() && std::none_of(h.blocks.front().positions.begin(), h.blocks.front().positions.end(),
                                           [&](int32_t p) { return h.entries.count(p) != 0; })) {
    h.blocks.pop_front();
  }
  return e;
}

std::vector<SpillTier::Scored> SpillTier::candidates(uint32_t layer, uint32_t kv_head, std::span<const float> queries,
                                                     std::span<const float> log_z, float scale,
                                                     float threshold) const {
  const Head& h = head(layer, kv_head);
  const size_t n_queries = log_z.size();
  if (queries.size() != n_queries * head_dim_)
    throw std::invalid_argument(fmt::format("spill: {} query floats for {} queries of {}", queries.size(), n_queries,
                                            head_dim_));
  auto probability = [&](auto&& logit_of) {
    float p = 0;
    for (size_t i = 0; i < n_queries; ++i)
      p += std::exp(scale * logit_of(queries.subspan(i * head_dim_, head_dim_)) - log_z[i]);
    return p;
  };
  std::vector<Scored> out;
  for (const Block& block : h.blocks) {
    ++blocks_checked_;
    if (probability([&](std::span<const float> q) { return block.bounds.logit_bound(q); }) <= threshold) continue;
    ++blocks_opened_;
    for (int32_t p : block.positions) {
      const auto it = h.entries.find(p);
      if (it == h.entries.end()) continue;  // recalled
      const std::vector<float>& key = it->second.key;
      const float score = probability([&](std::span<const float> q) {
        float dot = 0;
        for (uint32_t c = 0; c < head_dim_; ++c) dot += q[c] * key[c];
        return dot;
      });
      if (score > threshold) out.push_back({p, score});
    }
  }
  std::sort(out.begin(), out.end(), [](const Scored& a, const Scored& b) {
    return a.score != b.score ? a.score > b.score : a.position < b.position;
  });
  return out;
}

void SpillTier::clear() {
  for (Head& h : heads_) h = Head{};
  entries_ = bytes_ = dropped_ = 0;
  blocks_checked_ = blocks_opened_ = 0;
}

}  // namespace kvscope::kv
