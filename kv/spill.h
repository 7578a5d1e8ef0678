// The host tier of `--spill`: evicted cache entries kept in host memory
// instead of dropped, so that they can come back.
//
// Per (layer, kv_head), each evicted entry keeps its key and value rows
// exactly as the device cache stored them (the format's words: a recall
// restores them bit for bit) and its key dequantized (f32, rotated as the
// cache holds it). Entries are grouped in blocks of `block_tokens`, in the
// order they were evicted; each block keeps key bounds, per channel the min
// and max of its keys (as Quest does), so that an upper bound on the logit
// of any key of the block against a query q is one pass over head_dim:
//   q . k <= sum_c max(q_c * min_c, q_c * max_c).
// Blocks whose bound cannot beat what the cache would evict for them are
// skipped without looking at their entries; only the others are scored
// exactly. A recalled entry leaves its block; the block's bounds are not
// tightened (they still bound the entries left).
//
// `max_bytes` caps the tier: past it the oldest blocks are dropped for good
// (counted in dropped()).
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <span>
#include <vector>

#include "kv/formats.h"

namespace kvscope::kv {

inline constexpr uint32_t kSpillBlockTokens = 16;

struct SpilledEntry {
  int32_t position = -1;
  int32_t token = -1;
  std::vector<uint32_t> key_words, value_words;  // the device rows, as stored
  std::vector<float> key;                        // key_words dequantized (head_dim)
};

// Per channel min and max of a block's keys.
struct KeyBounds {
  std::vector<float> min, max;
  void include(std::span<const float> key);
  // Upper bound on q . k over every key included (exact when all keys equal).
  float logit_bound(std::span<const float> q) const;
};

class SpillTier {
 public:
  // `key_layout`/`value_layout`: one layer's rows (KvCache::key_layout()).
  // Keys stored per channel in blocks (kivi2) have no row of their own:
  // std::invalid_argument says to choose another key format.
  SpillTier(uint32_t n_layer, uint32_t n_kv_head, const TensorLayout& key_layout, const TensorLayout& value_layout,
            uint64_t max_bytes = 0, uint32_t block_tokens = kSpillBlockTokens);

  // One evicted entry of (layer, kv_head) with its rows as the device held them.
  void add(uint32_t layer, uint32_t kv_head, int32_t position, int32_t token, std::span<const uint32_t> key_words,
           std::span<const uint32_t> value_words);
  bool contains(uint32_t layer, uint32_t kv_head, int32_t position) const;
  const SpilledEntry* find(uint32_t layer, uint32_t kv_head, int32_t position) const;
  // Removes the entry and returns it (std::out_of_range when not spilled).
  SpilledEntry take(uint32_t layer, uint32_t kv_head, int32_t position);

  // Positions of (layer, kv_head) whose block's bound for some query head
  // reaches `threshold`: score(block) = sum over the queries of
  // exp(scale * bound(q) - log_z); each entry of such a block is then scored
  // exactly the same way with its key. Returns (position, exact score) of the
  // entries scoring above `threshold`, best first. `queries` is
  // [n_queries][head_dim], `log_z` one per query (the log of its softmax
  // denominator: exp(scale * q.k - log_z) is k's attention probability).
  struct Scored {
    int32_t position;
    float score;
  };
  std::vector<Scored> candidates(uint32_t layer, uint32_t kv_head, std::span<const float> queries,
                                 std::span<const float> log_z, float scale, float threshold) const;
  // Blocks whose bound was checked, and of them those opened, since clear().
  uint64_t blocks_checked() const { return blocks_checked_; }
  uint64_t blocks_opened() const { return blocks_opened_; }

  uint64_t entries() const { return entries_; }
  uint64_t host_bytes() const { return bytes_; }
  uint64_t peak_host_bytes() const { return peak_bytes_; }
  uint64_t dropped() const { return dropped_; }
  uint32_t head_dim() const { return head_dim_; }
  void clear();

 private:
  struct Block {
    std::vector<int32_t> positions;  // in eviction order; recalled ones are gone from `entries`
    KeyBounds bounds;
  };
  struct Head {
    std::map<int32_t, SpilledEntry> entries;  // by position
    std::deque<Block> blocks;
  };
  Head& head(uint32_t layer, uint32_t kv_head) { return heads_[size_t{layer} * n_kv_head_ + kv_head]; }
  const Head& head(uint32_t layer, uint32_t kv_head) const { return heads_[size_t{layer} * n_kv_head_ + kv_head]; }
  uint64_t entry_bytes() const;
  void drop_oldest();

  uint32_t n_layer_, n_kv_head_, head_dim_, block_tokens_;
  TensorLayout key_layout_, value_layout_;
  uint64_t max_bytes_;
  std::vector<Head> heads_;
  uint64_t entries_ = 0, bytes_ = 0, peak_bytes_ = 0, dropped_ = 0;
  mutable uint64_t blocks_checked_ = 0, blocks_opened_ = 0;
};

}  // namespace kvscope::kv
