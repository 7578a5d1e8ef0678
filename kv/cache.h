// The slot-table KV cache.
//
// Per layer, a pool of `capacity` slots holds keys and values on the device,
// laid out [kv_head][slot][head_dim] in the storage format. Per (layer,
// kv_head) a slot table maps slot -> token position (-1: empty), mirrored on
// the device so the attention shader knows which slots are live and which are
// visible to a query (slot position <= query position). Writes go to the slots
// the table assigns; freeing a slot only marks it empty, so the cache is never
// moved. Storage format (f32, f16, ...) and which tokens are kept (eviction)
// are independent: the quantized formats and the policies plug in here.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/recorder.h"
#include "kv/eviction_driver.h"
#include "kv/formats.h"
#include "kv/pins.h"
#include "kv/slot_table.h"

namespace kvscope::kv {

class SpillTier;

// Format, format_name(), parse_format(), format_names(): kv/formats.h.
// Every storage format, in declaration order: what `kvscope eval --sweep`
// iterates over, so a format added here is measured without other changes.
std::span<const Format> all_formats();

struct CacheShape {
  uint32_t n_layer = 0;
  uint32_t n_kv_head = 0;
  uint32_t head_dim = 0;
  // Per layer, the attention window of a sliding-window layer (Gemma 3's
  // local layers: a query sees only keys less than `window` positions
  // behind it), 0 for a global layer; empty: every layer global.
  std::vector<uint32_t> windows;
  uint32_t window(uint32_t layer) const { return layer < windows.size() ? windows[layer] : 0; }
  bool has_windows() const;
  // The layer whose table stands for the cache's token count: the first global one.
  uint32_t reference_layer() const;
};

struct CacheConfig {
  Format k_format = Format::F16;
  Format v_format = Format::F16;
  uint32_t capacity = 0;  // slots per (layer, kv_head); the context length
  // Elements per quantization group along head_dim (q8, q4, kivi2 values);
  // 0: default_group_size(head_dim). Must divide head_dim (checked at creation).
  uint32_t group_size = 0;
  // kivi2 keys: slots per per-channel block, which is also how many recent
  // tokens stay in f16 (the block being filled). 0: kDefaultTokenGroup.
  uint32_t token_group = 0;
  // Quantized keys (q8, q4, kivi2) are Hadamard-mixed after RoPE and before
  // quantizing, queries alike (kv/hadamard.h): a few large channels no longer
  // set every group's step. false: stored as they are (for comparison).
  bool hadamard = true;
  // Sparse-V: attention skips (neither dequantizes nor adds) the value rows
  // whose attention weight is below this; 0: off. Any value format.
  float sparse_v = 0.0f;
  // --spill: evicted entries go to a host-memory tier and come back when the
  // previous step's query would attend to them more than to the weakest live
  // entry (kv/spill.h; KvCache's spill section). Needs a policy to evict.
  bool spill = false;
  uint64_t spill_max_bytes = 0;  // cap on the host tier, 0: none (the oldest blocks go past it)
};

// Slots per kv head of one layer: the capacity, or for a sliding-window layer
// only what its queries can see — the window and one step of `max_batch`
// tokens (rounded to whole kivi2 key blocks, plus one) — when that is fewer.
// Older positions leave such a layer as each step writes (KvCache::reserve):
// the model never attends to them, so no policy is involved or logged.
uint32_t layer_slots(const CacheShape& shape, const CacheConfig& config, uint32_t max_batch, uint32_t layer);

// Device bytes of keys and values over all layers for a cache of this shape
// and config whose steps write at most `max_batch` tokens, as KvCache
// allocates them (no device needed: `kvscope info`).
uint64_t cache_device_bytes(const CacheShape& shape, const CacheConfig& config, uint32_t max_batch);


// Whether a cache of this shape and config can be made and run `policy`
// (null: none): the layouts (a group size that divides head_dim), and what
// --spill needs (a policy, keys stored one row per token, no rolling RoPE).
// Throws std::invalid_argument saying what to change. KvCache checks the same.
void check_cache_config(const CacheShape& shape, const CacheConfig& config, const EvictionPolicy* policy);

// What the forward pass records for one step (KvCache::begin_step).
struct StepPlan {
  uint32_t n_tokens = 0;              // the call's next n tokens go in this step
  bool scores = false;                // run the scores pass into KvCache::scores()
  uint32_t score_first_query = 0;     // ... summing queries from this one
  bool scores_accumulate = false;     // ... onto the previous values
  // Rolling RoPE: the queries' cache-relative positions (their ranks among
  // the live positions of layer 0, kv head 0); empty otherwise.
  std::vector<int32_t> rope_query_positions;
};

class KvCache {
 public:
  // `max_batch` bounds the tokens of one forward call (the write-slot buffer).
  KvCache(const gpu::Context& ctx, const CacheShape& shape, const CacheConfig& config,
          uint32_t max_batch);

  const CacheShape& shape() const { return shape_; }
  const CacheConfig& config() const { return config_; }
  uint32_t capacity() const { return config_.capacity; }

  ~KvCache();
  KvCache(KvCache&&) noexcept;
  KvCache& operator=(KvCache&&) noexcept;

  // The forward pass's side of the cache: a call of many tokens runs as
  // steps. begin_step() plans the next one — the eviction driver makes room
  // (with a policy), the step's tokens get slots (reserve) — and says what the
  // shaders must do; end_step() after the step's submit reads back what the
  // next one needs (scores, spill rows). The forward pass never steers the
  // policy itself. Throws ContextFull (nothing changed) when the tokens do not
  // fit: without a policy, the whole call is checked up front.
  StepPlan begin_step(std::span<const int32_t> positions, std::span<const int32_t> tokens);
  void end_step();
  // Assigns a slot in every (layer, kv_head) for each position, in order, and
  // writes the assignments to the device, with no policy involved (tests and
  // begin_step). Throws ContextFull (nothing changed) when they do not fit.
  void reserve(std::span<const int32_t> positions, std::span<const int32_t> tokens = {});
  // Empties every slot holding a position >= `position`. A sliding-window
  // layer cannot get back the positions its window let go, so on such a
  // model continue only from a position within the window of the last one
  // written (the app refills from an empty cache to regenerate or edit).
  void truncate(int32_t position);
  void clear();

  // Eviction (kv/eviction_driver.h): with a policy the cache owns a driver
  // (the policy, the pinned spans, the event log, the scores). The policy's
  // shape must match the cache (std::invalid_argument if not), and the
  // config must allow it (check_cache_config).
  void set_policy(std::unique_ptr<EvictionPolicy> policy, PinnedSpans pins = {});
  const EvictionDriver* eviction() const { return eviction_.get(); }  // null without a policy
  EvictionDriver* eviction() { return eviction_.get(); }
  // The prompt is complete (SnapKV and PyramidKV compress it now); later steps decode.
  void end_prefill();
  std::span<const SlotTable> tables() const { return tables_; }  // [layer][kv_head]

  // Device views for the shaders of one layer.
  gpu::Binding keys(uint32_t layer) const;
  gpu::Binding values(uint32_t layer) const;
  gpu::Binding slot_positions(uint32_t layer) const;  // int[n_kv_head][capacity]
  gpu::Binding write_slots(uint32_t layer) const;     // int[n_tokens][n_kv_head] of the last reserve
  gpu::Binding open_blocks(uint32_t layer) const;     // int[n_kv_head]: each table's open_block()
  // float[n_kv_head][capacity]: the per-slot scores the policy asks for (StepPlan::scores).
  gpu::Binding scores(uint32_t layer) const;

  // Rolling StreamingLLM (`streamingllm:...,rolling`): keys are stored
  // un-rotated and RoPE is applied at cache-relative positions: a key's is
  // its rank among the live positions of its (layer, kv_head) in token order,
  // a query's the number of live tokens before it. Token positions (the
  // causal mask, the log) keep growing past the context; RoPE never sees
  // more than the slot capacity, so generation continues past the trained
  // context.
  bool rolling() const { return rolling_; }
  // Whether keys are Hadamard-mixed before quantizing: quantized keys with
  // CacheConfig::hadamard.
  bool keys_hadamard() const {
    return config_.hadamard && config_.k_format != Format::F32 && config_.k_format != Format::F16;
  }
  // int[n_kv_head][capacity]: each slot's cache-relative position (-1:
  // empty), refreshed with the slot tables. Without rolling, a binding
  // attention does not read.
  gpu::Binding rope_positions(uint32_t layer) const;
  // The cache-relative positions of live `positions` (StepPlan::rope_query_positions).
  std::vector<int32_t> rope_query_positions(std::span<const int32_t> positions) const;
  // How keys and values of a global layer are laid out (kv/formats.h), and
  // of layer `layer` (a sliding-window layer's hold fewer slots).
  const TensorLayout& key_layout() const { return key_layout_; }
  const TensorLayout& value_layout() const { return value_layout_; }
  const TensorLayout& key_layout(uint32_t layer) const;
  const TensorLayout& value_layout(uint32_t layer) const;
  // Slots per kv head of layer `layer` (layer_slots()): its tables' size.
  uint32_t layer_slots(uint32_t layer) const { return table(layer, 0).capacity(); }
  uint32_t scan_slots(uint32_t layer) const;          // max high_water over the layer's heads

  const SlotTable& table(uint32_t layer, uint32_t kv_head) const {
    return tables_[size_t{layer} * shape_.n_kv_head + kv_head];
  }
  // Positions held: the same in every table of a global layer without a
  // policy; with one, those of the first global layer's kv head 0 (a
  // per-head policy keeps other tokens elsewhere).
  uint32_t tokens() const { return tokens_; }

  // --spill (CacheConfig::spill, with a policy). Per step the forward pass
  // records record_spill_transfers() before anything writes the cache (rows
  // of the slots evicted since the last step are copied out, recalled rows
  // in), and record_spill_query() after each layer's attention (the last
  // token's query, softmax row and key, read back for the next step's recall
  // decision: a one-step lag); scores_written() then moves the evicted rows
  // into the host tier. make_room() recalls on single-token (decode) steps,
  // after the policy's evictions (kv/cache_spill.cpp).
  const SpillTier* spill() const { return spill_.get(); }
  uint64_t recalls() const { return recalls_; }
  void record_spill_transfers(gpu::Recorder& rec);
  // q_offset/probs_offset: bytes to the last token's query row in `qkv` and
  // its softmax rows ([n_head][capacity]) in `probs`.
  void record_spill_query(gpu::Recorder& rec, uint32_t layer, uint32_t n_head, const gpu::Buffer& qkv,
                          uint64_t q_offset, const gpu::Buffer& probs, uint64_t probs_offset);

  // What the cache costs: the device memory allocated for keys and values,
  // and that per slot of capacity (over all layers; kivi2's f16 window and
  // every scale counted, so it depends on the capacity for kivi2 keys).
  double bytes_per_token() const;
  uint64_t device_bytes() const;

 private:
  void upload_tables(uint32_t layer);
  ContextFull context_full(const SlotTable& table, size_t incoming) const;
  // --spill (kv/cache_spill.cpp)
  struct SpillMove {  // one row moving between the device cache and the host tier
    uint32_t layer, kv_head, slot;
    int32_t position, token;
  };
  std::vector<std::vector<int32_t>> snapshot_positions(uint32_t layer) const;
  void queue_evicted(uint32_t layer, const std::vector<std::vector<int32_t>>& before);
  void recall(LayerView& view);
  void spill_step_done();

  CacheShape shape_;
  CacheConfig config_;
  uint32_t max_batch_;
  TensorLayout key_layout_, value_layout_;                       // global layers
  std::vector<TensorLayout> layer_key_layouts_, layer_value_layouts_;  // per layer
  std::vector<gpu::Buffer> keys_, values_;  // per layer
  gpu::Buffer slot_positions_;              // [layer][stride]: host-visible
  gpu::Buffer write_slots_;                 // [layer][stride]: host-visible
  gpu::Buffer open_blocks_;                 // [layer][stride]: host-visible
  gpu::Buffer rope_positions_;              // [layer][slot_positions_stride_]: host-visible, rolling only
  bool rolling_ = false;
  uint64_t slot_positions_stride_ = 0, write_slots_stride_ = 0, open_blocks_stride_ = 0;
  std::vector<SlotTable> tables_;           // [layer][kv_head]
  uint32_t tokens_ = 0;

  std::unique_ptr<EvictionDriver> eviction_;
  gpu::Buffer scores_;                      // [layer][stride]: readback, copied into the driver's after each step
  uint64_t scores_stride_ = 0;
  // What the spill tier does around the policy in each layer of a step
  // (kv/cache_spill.cpp): note the slots it empties (their rows go to the
  // tier), and on a decode step recall entries that beat the weakest live ones.
  class SpillHook final : public EvictionDriver::LayerHook {
   public:
    explicit SpillHook(KvCache& cache) : cache_(&cache) {}
    void before(uint32_t layer) override;
    void after(LayerView& view, uint32_t incoming) override;

   private:
    KvCache* cache_;
    std::vector<std::vector<int32_t>> before_;
  };

  std::unique_ptr<SpillTier> spill_;
  std::vector<SpillMove> spill_out_pending_;      // evicted, rows still on the device
  std::vector<SpillMove> spill_in_pending_;       // recalled, rows in spill_in_words_
  std::vector<uint32_t> spill_in_words_;          // [move][k_row_words + v_row_words]
  gpu::Buffer spill_out_, spill_in_;              // staging: readback, upload
  gpu::Buffer spill_query_;                       // readback: per layer q | probs | the last token's key rows
  uint64_t spill_query_stride_ = 0;
  uint32_t spill_n_head_ = 0;
  std::vector<int32_t> last_slots_;               // [layer][kv_head]: the last token's slot of the last reserve
  std::vector<int32_t> query_slots_;              // last_slots_ as of the query read back
  bool spill_query_valid_ = false;
  uint64_t recalls_ = 0;
  const gpu::Context* ctx_ = nullptr;
};

}  // namespace kvscope::kv
