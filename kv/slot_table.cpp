#include "kv/slot_table.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace kvscope::kv {

ContextFull::ContextFull(uint32_t held_, uint32_t incoming_, uint32_t slots_, std::string_view detail)
    : std::runtime_error(fmt::format(
          "the context is full: {} tokens held + {} new > {} slots{}; start a new conversation, use a larger "
          "context (-c), or let the cache evict once it is full (--on-full streamingllm:sinks=4,window={})",
          held_, incoming_, slots_, detail.empty() ? std::string{} : fmt::format(" ({})", detail),
          slots_ > 8 ? slots_ - 4 : 4)),
      held(held_),
      incoming(incoming_),
      slots(slots_) {}

SlotTable::SlotTable(uint32_t capacity, uint32_t block_slots)
    : positions_(capacity, -1), block_slots_(std::max(block_slots, 1u)) {
  block_live_.assign((capacity + block_slots_ - 1) / block_slots_, 0);
}

uint32_t SlotTable::block_size(uint32_t block) const {
  return std::min(block_slots_, capacity() - block * block_slots_);
}

int32_t SlotTable::assign(int32_t position) {
  if (open_block_ < 0) {
    uint32_t b = next_free_block_hint_;
    while (b < block_live_.size() && block_live_[b] != 0) ++b;
    next_free_block_hint_ = b;
    if (b == block_live_.size()) return -1;
    open_block_ = static_cast<int32_t>(b);
  }
  const uint32_t block = static_cast<uint32_t>(open_block_), first = block * block_slots_;
  uint32_t slot = first;
  while (positions_[slot] >= 0) ++slot;  // the open block is not full
  positions_[slot] = position;
  ++live_;
  high_water_ = std::max(high_water_, slot + 1);
  if (++block_live_[block] == block_size(block)) open_block_ = -1;  // sealed
  if (block == next_free_block_hint_) ++next_free_block_hint_;
  return static_cast<int32_t>(slot);
}

void SlotTable::release(uint32_t slot) {
  if (positions_.at(slot) < 0) return;
  positions_[slot] = -1;
  --live_;
  const uint32_t block = block_of(slot);
  if (--block_live_[block] == 0) {
    next_free_block_hint_ = std::min(next_free_block_hint_, block);
    // An emptied open block is just empty: the next assign takes the lowest
    // empty block, which keeps the live slots packed low.
    if (open_block_ == static_cast<int32_t>(block)) open_block_ = -1;
  }
  while (high_water_ > 0 && positions_[high_water_ - 1] < 0) --high_water_;
}

uint32_t SlotTable::assignable() const {
  uint32_t n = open_block_ >= 0 ? block_size(open_block_) - block_live_[open_block_] : 0;
  for (uint32_t b = next_free_block_hint_; b < block_live_.size(); ++b)
    if (block_live_[b] == 0 && static_cast<int32_t>(b) != open_block_) n += block_size(b);
  return n;
}

void SlotTable::clear() {
  std::fill(positions_.begin(), positions_.end(), -1);
  std::fill(block_live_.begin(), block_live_.end(), 0u);
  live_ = high_water_ = next_free_block_hint_ = 0;
  open_block_ = -1;
}

SlotTable SlotTable::restore(std::vector<int32_t> positions, uint32_t block_slots, int32_t open_block) {
  SlotTable t(static_cast<uint32_t>(positions.size()), block_slots);
  for (uint32_t slot = 0; slot < t.capacity(); ++slot) {
    if (positions[slot] < -1) throw std::invalid_argument(fmt::format("slot {} holds position {}", slot, positions[slot]));
    if (positions[slot] < 0) continue;
    ++t.live_;
    ++t.block_live_[t.block_of(slot)];
    t.high_water_ = slot + 1;
  }
  if (open_block < -1 || open_block >= static_cast<int32_t>(t.block_live_.size()))
    throw std::invalid_argument(fmt::format("open block {} is outside the table's {} blocks", open_block,
                                            t.block_live_.size()));
  if (open_block >= 0 && t.block_live_[open_block] == t.block_size(open_block))
    throw std::invalid_argument(fmt::format("open block {} is full", open_block));
  t.positions_ = std::move(positions);
  t.open_block_ = open_block;
  return t;  // next_free_block_hint_ 0: a lower bound, always right
}

}  // namespace kvscope::kv
