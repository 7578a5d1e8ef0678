#include "kv/cache.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace kvscope::kv {

namespace {
constexpr uint64_t kBindingAlign = 256;  // >= any device's minStorageBufferOffsetAlignment
uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
}  // namespace

std::string_view format_name(Format f) {
  switch (f) {
    case Format::F32: return "f32";
    case Format::F16: return "f16";
  }
  return "?";
}

std::optional<Format> parse_format(std::string_view name) {
  if (name == "f32") return Format::F32;
  if (name == "f16") return Format::F16;
  return std::nullopt;
}

std::string_view format_names() { return "f32 f16"; }

double bytes_per_element(Format f) {
  switch (f) {
    case Format::F32: return 4;
    case Format::F16: return 2;
  }
  return 0;
}

// ---------------------------------------------------------------- SlotTable

SlotTable::SlotTable(uint32_t capacity) : positions_(capacity, -1) {}

int32_t SlotTable::assign(int32_t position) {
  if (live_ == capacity()) return -1;
  uint32_t slot = next_free_hint_;
  while (positions_[slot] >= 0) slot = (slot + 1) % capacity();
  positions_[slot] = position;
  ++live_;
  high_water_ = std::max(high_water_, slot + 1);
  next_free_hint_ = (slot + 1) % capacity();
  return static_cast<int32_t>(slot);
}

void SlotTable::release(uint32_t slot) {
  if (positions_.at(slot) < 0) return;
  positions_[slot] = -1;
  --live_;
  next_free_hint_ = std::min(next_free_hint_, slot);
  while (high_water_ > 0 && positions_[high_water_ - 1] < 0) --high_water_;
}

void SlotTable::clear() {
  std::fill(positions_.begin(), positions_.end(), -1);
  live_ = high_water_ = next_free_hint_ = 0;
}

// ------------------------------------------------------------------ KvCache

KvCache::KvCache(const gpu::Context& ctx, const CacheShape& shape, const CacheConfig& config,
                 uint32_t max_batch)
    : shape_(shape), config_(config), max_batch_(max_batch) {
  if (config.capacity == 0) throw std::invalid_argument("KV cache: capacity must be > 0");
  if (shape.head_dim % 2 != 0)
    throw std::invalid_argument(fmt::format("KV cache: head_dim {} must be even", shape.head_dim));
  const uint64_t elems = uint64_t{shape.n_kv_head} * config.capacity * shape.head_dim;
  // The attention shader binds one layer's keys (and values) whole.
  const double widest = std::max(bytes_per_element(config.k_format), bytes_per_element(config.v_format));
  if (elems * widest > double(ctx.max_binding_bytes()))
    throw std::invalid_argument(fmt::format(
        "a context of {} tokens needs {:.0f} MiB of keys per layer, more than one storage-buffer binding "
        "of {} MiB on {}; use a smaller context (-c) or a smaller cache format (--kv)",
        config.capacity, elems * widest / 1048576.0, ctx.max_binding_bytes() / 1048576, ctx.info().name));
  for (uint32_t l = 0; l < shape.n_layer; ++l) {
    keys_.emplace_back(ctx, static_cast<uint64_t>(elems * bytes_per_element(config.k_format)),
                       gpu::MemoryUse::Device, "kv cache keys");
    values_.emplace_back(ctx, static_cast<uint64_t>(elems * bytes_per_element(config.v_format)),
                         gpu::MemoryUse::Device, "kv cache values");
  }
  slot_positions_stride_ = align_up(uint64_t{shape.n_kv_head} * config.capacity * 4, kBindingAlign);
  write_slots_stride_ = align_up(uint64_t{max_batch} * shape.n_kv_head * 4, kBindingAlign);
  slot_positions_ = gpu::Buffer(ctx, slot_positions_stride_ * shape.n_layer, gpu::MemoryUse::Upload,
                                "kv slot tables");
  write_slots_ = gpu::Buffer(ctx, write_slots_stride_ * shape.n_layer, gpu::MemoryUse::Upload,
                             "kv write slots");
  tables_.assign(size_t{shape.n_layer} * shape.n_kv_head, SlotTable(config.capacity));
  for (uint32_t l = 0; l < shape.n_layer; ++l) upload_tables(l);
}

void KvCache::upload_tables(uint32_t layer) {
  std::vector<int32_t> flat(size_t{shape_.n_kv_head} * config_.capacity);
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
    auto pos = table(layer, h).positions();
    std::copy(pos.begin(), pos.end(), flat.begin() + size_t{h} * config_.capacity);
  }
  slot_positions_.write_as<int32_t>(flat, layer * slot_positions_stride_);
}

void KvCache::reserve(std::span<const int32_t> positions) {
  const uint32_t n = static_cast<uint32_t>(positions.size());
  if (n > max_batch_)
    throw std::invalid_argument(fmt::format("KV cache: {} tokens in one step, at most {}", n, max_batch_));
  for (uint32_t l = 0; l < shape_.n_layer; ++l)
    for (uint32_t h = 0; h < shape_.n_kv_head; ++h)
      if (table(l, h).live() + n > config_.capacity)
        throw ContextFull(fmt::format(
            "the context is full: {} tokens held + {} new > {} slots; start a new conversation or "
            "use a larger context (-c)",
            table(l, h).live(), n, config_.capacity));

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

uint32_t KvCache::scan_slots(uint32_t layer) const {
  uint32_t n = 0;
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) n = std::max(n, table(layer, h).high_water());
  return n;
}

double KvCache::bytes_per_token() const {
  const double per_layer = double(shape_.n_kv_head) * shape_.head_dim *
                           (bytes_per_element(config_.k_format) + bytes_per_element(config_.v_format));
  return per_layer * shape_.n_layer;
}

uint64_t KvCache::device_bytes() const {
  uint64_t total = 0;
  for (const auto& b : keys_) total += b.size();
  for (const auto& b : values_) total += b.size();
  return total;
}

}  // namespace kvscope::kv
