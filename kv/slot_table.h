// Slot tables: which token position each slot of one (layer, kv_head) of
// the KV cache holds. The cache (kv/cache.h), the eviction driver and the
// policies (kv/eviction_driver.h, kv/policy.h) and the event log all act on
// them; nothing here touches the device.
#pragma once
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace kvscope::kv {

// The one context-fit error: `incoming` tokens do not fit next to the `held`
// ones in `slots` usable slots. Every place that finds the context full (the
// cache, the eviction driver with policy `full`, a session, the CLI) throws
// this, so the words and the advice are the same everywhere; `detail` adds
// why fewer slots than the context are usable. Front ends may read the numbers.
struct ContextFull : std::runtime_error {
  ContextFull(uint32_t held, uint32_t incoming, uint32_t slots, std::string_view detail = {});
  uint32_t held = 0, incoming = 0, slots = 0;
};

// Which position each slot of one (layer, kv_head) holds.
//
// Slots come in blocks of `block_slots` consecutive slots (1 for every format
// but kivi2 keys, whose blocks are quantized per channel as a whole). One
// block at a time is open: new positions fill its empty slots (lowest first);
// when it is full it is sealed (the cache quantizes it) and the lowest wholly
// empty block opens next. A slot freed in a sealed block is reused only when
// the whole block is empty: writing into a quantized block would need its
// per-channel scales recomputed from tokens held only as 2-bit codes, so the
// hole is left instead (truncating into a sealed block, or evicting from it,
// costs up to block_slots - 1 slots until the block empties). With
// block_slots 1 every slot is its own block: the lowest empty slot is used.
class SlotTable {
 public:
  explicit SlotTable(uint32_t capacity = 0, uint32_t block_slots = 1);
  // A slot for `position` (see above), or -1 when none can be used.
  int32_t assign(int32_t position);
  void release(uint32_t slot);
  int32_t position(uint32_t slot) const { return positions_[slot]; }
  uint32_t capacity() const { return static_cast<uint32_t>(positions_.size()); }
  uint32_t live() const { return live_; }
  uint32_t block_slots() const { return block_slots_; }
  // The block being filled (its rows live in kivi2's f16 window), -1: none.
  int32_t open_block() const { return open_block_; }
  // How many more positions assign() can place now (<= capacity - live).
  uint32_t assignable() const;
  // One past the highest slot ever live: the attention shader scans [0, high_water).
  uint32_t high_water() const { return high_water_; }
  std::span<const int32_t> positions() const { return positions_; }
  void clear();
  // A table in the state `positions` (slot -> position, -1 empty) and
  // `open_block` (-1: none) describe — all of its state. Throws
  // std::invalid_argument when they contradict (an open block that is full,
  // a position below -1, a block out of range).
  static SlotTable restore(std::vector<int32_t> positions, uint32_t block_slots, int32_t open_block);

 private:
  uint32_t block_of(uint32_t slot) const { return slot / block_slots_; }
  uint32_t block_size(uint32_t block) const;

  std::vector<int32_t> positions_;
  std::vector<uint32_t> block_live_;  // live slots per block
  uint32_t block_slots_ = 1;
  uint32_t live_ = 0;
  uint32_t high_water_ = 0;
  uint32_t next_free_block_hint_ = 0;  // no wholly empty block below it
  int32_t open_block_ = -1;
};

}  // namespace kvscope::kv
