#include "kv/cache.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace kvscope::kv {

namespace {
constexpr uint64_t kBindingAlign = 256;  // >= any device's minStorageBufferOffsetAlignment
uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
}  // namespace

std::span<const Format> all_formats() {
  static constexpr Format formats[] = {Format::F32, Format::F16, Format::Q8, Format::Q4, Format::Kivi2};
  return formats;
}

uint64_t cache_device_bytes(const CacheShape& shape, const CacheConfig& config) {
  const TensorLayout k = tensor_layout(encoding(config.k_format, Role::Keys), shape.n_kv_head, config.capacity,
                                       shape.head_dim, config.group_size, config.token_group);
  const TensorLayout v = tensor_layout(encoding(config.v_format, Role::Values), shape.n_kv_head,
                                       config.capacity, shape.head_dim, config.group_size, config.token_group);
  return (k.bytes() + v.bytes()) * shape.n_layer;
}

// ---------------------------------------------------------------- SlotTable

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

// ------------------------------------------------------------------ KvCache

KvCache::KvCache(const gpu::Context& ctx, const CacheShape& shape, const CacheConfig& config,
                 uint32_t max_batch)
    : shape_(shape), config_(config), max_batch_(max_batch) {
  if (config.capacity == 0) throw std::invalid_argument("KV cache: capacity must be > 0");
  key_layout_ = tensor_layout(encoding(config.k_format, Role::Keys), shape.n_kv_head, config.capacity,
                              shape.head_dim, config.group_size, config.token_group);
  value_layout_ = tensor_layout(encoding(config.v_format, Role::Values), shape.n_kv_head, config.capacity,
                                shape.head_dim, config.group_size, config.token_group);
  config_.group_size = resolve_group_size(shape.head_dim, config.group_size);
  config_.token_group = config.token_group == 0 ? kDefaultTokenGroup : config.token_group;
  // The shaders bind one layer's keys (and values) whole.
  for (const auto* layout : {&key_layout_, &value_layout_})
    if (layout->bytes() > ctx.max_binding_bytes())
      throw std::invalid_argument(fmt::format(
          "a context of {} tokens needs {:.0f} MiB of {} per layer, more than one storage-buffer binding "
          "of {} MiB on {}; use a smaller context (-c) or a smaller cache format (--kv)",
          config.capacity, layout->bytes() / 1048576.0, layout == &key_layout_ ? "keys" : "values",
          ctx.max_binding_bytes() / 1048576, ctx.info().name));
  for (uint32_t l = 0; l < shape.n_layer; ++l) {
    keys_.emplace_back(ctx, key_layout_.bytes(), gpu::MemoryUse::Device, "kv cache keys");
    values_.emplace_back(ctx, value_layout_.bytes(), gpu::MemoryUse::Device, "kv cache values");
  }
  slot_positions_stride_ = align_up(uint64_t{shape.n_kv_head} * config.capacity * 4, kBindingAlign);
  write_slots_stride_ = align_up(uint64_t{max_batch} * shape.n_kv_head * 4, kBindingAlign);
  open_blocks_stride_ = align_up(uint64_t{shape.n_kv_head} * 4, kBindingAlign);
  slot_positions_ = gpu::Buffer(ctx, slot_positions_stride_ * shape.n_layer, gpu::MemoryUse::Upload,
                                "kv slot tables");
  write_slots_ = gpu::Buffer(ctx, write_slots_stride_ * shape.n_layer, gpu::MemoryUse::Upload,
                             "kv write slots");
  open_blocks_ = gpu::Buffer(ctx, open_blocks_stride_ * shape.n_layer, gpu::MemoryUse::Upload,
                             "kv open blocks");
  // Blocks matter only where a block is quantized as a whole: kivi2 keys.
  const uint32_t block_slots = key_layout_.encoding == Encoding::Q2Channel ? key_layout_.token_group : 1;
  tables_.assign(size_t{shape.n_layer} * shape.n_kv_head, SlotTable(config.capacity, block_slots));
  for (uint32_t l = 0; l < shape.n_layer; ++l) upload_tables(l);
}

void KvCache::upload_tables(uint32_t layer) {
  std::vector<int32_t> flat(size_t{shape_.n_kv_head} * config_.capacity);
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
    auto pos = table(layer, h).positions();
    std::copy(pos.begin(), pos.end(), flat.begin() + size_t{h} * config_.capacity);
  }
  slot_positions_.write_as<int32_t>(flat, layer * slot_positions_stride_);
  std::vector<int32_t> open(shape_.n_kv_head);
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) open[h] = table(layer, h).open_block();
  open_blocks_.write_as<int32_t>(open, layer * open_blocks_stride_);
}

void KvCache::reserve(std::span<const int32_t> positions) {
  const uint32_t n = static_cast<uint32_t>(positions.size());
  if (n > max_batch_)
    throw std::invalid_argument(fmt::format("KV cache: {} tokens in one step, at most {}", n, max_batch_));
  for (uint32_t l = 0; l < shape_.n_layer; ++l)
    for (uint32_t h = 0; h < shape_.n_kv_head; ++h)
      if (table(l, h).assignable() < n)
        throw ContextFull(fmt::format(
            "the context is full: {} tokens held + {} new > {} slots{}; start a new conversation or "
            "use a larger context (-c)",
            table(l, h).live(), n, table(l, h).live() + table(l, h).assignable(),
            table(l, h).assignable() + table(l, h).live() < config_.capacity
                ? fmt::format(" usable (kivi2 keys reuse freed slots only as whole blocks of {})",
                              table(l, h).block_slots())
                : ""));

  std::vector<int32_t> slots(size_t{n} * shape_.n_kv_head);
  for (uint32_t l = 0; l < shape_.n_layer; ++l) {
    for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
      SlotTable& t = tables_[size_t{l} * shape_.n_kv_head + h];
      for (uint32_t i = 0; i < n; ++i) slots[size_t{i} * shape_.n_kv_head + h] = t.assign(positions[i]);
    }
    write_slots_.write_as<int32_t>(slots, l * write_slots_stride_);
    upload_tables(l);
  }
  tokens_ += n;
}

void KvCache::truncate(int32_t position) {
  uint32_t removed = 0;
  for (uint32_t l = 0; l < shape_.n_layer; ++l) {
    for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
      SlotTable& t = tables_[size_t{l} * shape_.n_kv_head + h];
      uint32_t before = t.live();
      for (uint32_t s = 0; s < t.capacity(); ++s)
        if (t.position(s) >= position) t.release(s);
      if (l == 0 && h == 0) removed = before - t.live();
    }
    upload_tables(l);
  }
  tokens_ -= removed;
}

void KvCache::clear() {
  for (auto& t : tables_) t.clear();
  for (uint32_t l = 0; l < shape_.n_layer; ++l) upload_tables(l);
  tokens_ = 0;
}

gpu::Binding KvCache::keys(uint32_t layer) const { return keys_.at(layer); }
gpu::Binding KvCache::values(uint32_t layer) const { return values_.at(layer); }
gpu::Binding KvCache::slot_positions(uint32_t layer) const {
  return {slot_positions_, layer * slot_positions_stride_, uint64_t{shape_.n_kv_head} * config_.capacity * 4};
}
gpu::Binding KvCache::write_slots(uint32_t layer) const {
  return {write_slots_, layer * write_slots_stride_, uint64_t{max_batch_} * shape_.n_kv_head * 4};
}
gpu::Binding KvCache::open_blocks(uint32_t layer) const {
  return {open_blocks_, layer * open_blocks_stride_, uint64_t{shape_.n_kv_head} * 4};
}

uint32_t KvCache::scan_slots(uint32_t layer) const {
  uint32_t n = 0;
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) n = std::max(n, table(layer, h).high_water());
  return n;
}

double KvCache::bytes_per_token() const { return double(device_bytes()) / config_.capacity; }

uint64_t KvCache::device_bytes() const {
  uint64_t total = 0;
  for (const auto& b : keys_) total += b.size();
  for (const auto& b : values_) total += b.size();
  return total;
}

}  // namespace kvscope::kv
