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
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"

namespace kvscope::kv {

enum class Format { F32, F16 };

std::string_view format_name(Format f);
std::optional<Format> parse_format(std::string_view name);  // "f32", "f16"
std::string_view format_names();                            // "f32 f16"
// Device bytes one element occupies in this format (scales included).
double bytes_per_element(Format f);

struct CacheShape {
  uint32_t n_layer = 0;
  uint32_t n_kv_head = 0;
  uint32_t head_dim = 0;
};

struct CacheConfig {
  Format k_format = Format::F16;
  Format v_format = Format::F16;
  uint32_t capacity = 0;  // slots per (layer, kv_head); the context length
};

// Thrown when tokens do not fit: the message says how many and what to do.
struct ContextFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Which position each slot of one (layer, kv_head) holds.
class SlotTable {
 public:
  explicit SlotTable(uint32_t capacity = 0);
  // The lowest empty slot for `position`, or -1 when every slot is live.
  int32_t assign(int32_t position);
  void release(uint32_t slot);
  int32_t position(uint32_t slot) const { return positions_[slot]; }
  uint32_t capacity() const { return static_cast<uint32_t>(positions_.size()); }
  uint32_t live() const { return live_; }
  // One past the highest slot ever live: the attention shader scans [0, high_water).
  uint32_t high_water() const { return high_water_; }
  std::span<const int32_t> positions() const { return positions_; }
  void clear();

 private:
  std::vector<int32_t> positions_;
  uint32_t live_ = 0;
  uint32_t high_water_ = 0;
  uint32_t next_free_hint_ = 0;
};

class KvCache {
 public:
  // `max_batch` bounds the tokens of one forward call (the write-slot buffer).
  KvCache(const gpu::Context& ctx, const CacheShape& shape, const CacheConfig& config,
          uint32_t max_batch);

  const CacheShape& shape() const { return shape_; }
  const CacheConfig& config() const { return config_; }
  uint32_t capacity() const { return config_.capacity; }

  // Assigns a slot in every (layer, kv_head) for each position, in order, and
  // writes the assignments to the device. Throws ContextFull (nothing changed)
  // when they do not fit.
  void reserve(std::span<const int32_t> positions);
  // Empties every slot holding a position >= `position` (regenerate, edit).
  void truncate(int32_t position);
  void clear();

  // Device views for the shaders of one layer.
  gpu::Binding keys(uint32_t layer) const;
  gpu::Binding values(uint32_t layer) const;
  gpu::Binding slot_positions(uint32_t layer) const;  // int[n_kv_head][capacity]
  gpu::Binding write_slots(uint32_t layer) const;     // int[n_tokens][n_kv_head] of the last reserve
  uint32_t scan_slots(uint32_t layer) const;          // max high_water over the layer's heads

  const SlotTable& table(uint32_t layer, uint32_t kv_head) const {
    return tables_[size_t{layer} * shape_.n_kv_head + kv_head];
  }
  uint32_t tokens() const { return tokens_; }  // positions held (same in every table now)

  // What the cache costs: K and V bytes per token over all layers, and the
  // device memory actually allocated for keys and values.
  double bytes_per_token() const;
  uint64_t device_bytes() const;

 private:
  void upload_tables(uint32_t layer);

  CacheShape shape_;
  CacheConfig config_;
  uint32_t max_batch_;
  std::vector<gpu::Buffer> keys_, values_;  // per layer
  gpu::Buffer slot_positions_;              // [layer][stride]: host-visible
  gpu::Buffer write_slots_;                 // [layer][stride]: host-visible
  uint64_t slot_positions_stride_ = 0, write_slots_stride_ = 0;
  std::vector<SlotTable> tables_;           // [layer][kv_head]
  uint32_t tokens_ = 0;
};

}  // namespace kvscope::kv
