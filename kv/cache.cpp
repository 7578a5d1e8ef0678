#include "kv/cache.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "kv/event_log.h"
#include "kv/policy.h"
#include "kv/spill.h"

namespace kvscope::kv {

namespace {
constexpr uint64_t kBindingAlign = 256;  // >= any device's minStorageBufferOffsetAlignment
uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
}  // namespace

std::span<const Format> all_formats() {
  static constexpr Format formats[] = {Format::F32, Format::F16, Format::Q8, Format::Q4, Format::Kivi2};
  return formats;
}

bool CacheShape::has_windows() const {
  return std::any_of(windows.begin(), windows.end(), [](uint32_t w) { return w > 0; });
}

uint32_t CacheShape::reference_layer() const {
  for (uint32_t l = 0; l < n_layer; ++l)
    if (window(l) == 0) return l;
  return 0;
}

uint32_t layer_slots(const CacheShape& shape, const CacheConfig& config, uint32_t max_batch, uint32_t layer) {
  const uint32_t window = shape.window(layer);
  if (window == 0) return config.capacity;
  // After a step drops what its first query cannot see, at most window - 1
  // positions stay; the step adds up to max_batch. kivi2 keys free slots only
  // as whole blocks: room for one more.
  const bool blocks = encoding(config.k_format, Role::Keys) == Encoding::Q2Channel;
  const uint64_t block = blocks ? (config.token_group ? config.token_group : kDefaultTokenGroup) : 1;
  const uint64_t need = (uint64_t{window} + max_batch + block - 1) / block * block + (blocks ? block : 0);
  return static_cast<uint32_t>(std::min<uint64_t>(config.capacity, need));
}

namespace {
TensorLayout layout_of(const CacheShape& shape, const CacheConfig& config, Role role, uint32_t slots) {
  return tensor_layout(encoding(role == Role::Keys ? config.k_format : config.v_format, role), shape.n_kv_head, slots,
                       shape.head_dim, config.group_size, config.token_group);
}
}  // namespace

uint64_t cache_device_bytes(const CacheShape& shape, const CacheConfig& config, uint32_t max_batch) {
  uint64_t total = 0;
  for (uint32_t l = 0; l < shape.n_layer; ++l) {
    const uint32_t slots = layer_slots(shape, config, max_batch, l);
    total += layout_of(shape, config, Role::Keys, slots).bytes() + layout_of(shape, config, Role::Values, slots).bytes();
  }
  return total;
}

// ------------------------------------------------------------------ KvCache

KvCache::KvCache(const gpu::Context& ctx, const CacheShape& shape, const CacheConfig& config,
                 uint32_t max_batch)
    : shape_(shape), config_(config), max_batch_(max_batch), ctx_(&ctx) {
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
  if (shape.has_windows() && shape.windows.size() != shape.n_layer)
    throw std::invalid_argument(fmt::format("KV cache: {} layer windows for {} layers", shape.windows.size(),
                                            shape.n_layer));
  for (uint32_t l = 0; l < shape.n_layer; ++l) {
    const uint32_t slots = kv::layer_slots(shape, config, max_batch, l);
    layer_key_layouts_.push_back(slots == config.capacity ? key_layout_
                                                          : layout_of(shape, config, Role::Keys, slots));
    layer_value_layouts_.push_back(slots == config.capacity ? value_layout_
                                                            : layout_of(shape, config, Role::Values, slots));
    keys_.emplace_back(ctx, layer_key_layouts_[l].bytes(), gpu::MemoryUse::Device, "kv cache keys");
    values_.emplace_back(ctx, layer_value_layouts_[l].bytes(), gpu::MemoryUse::Device, "kv cache values");
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
  tables_.reserve(size_t{shape.n_layer} * shape.n_kv_head);
  for (uint32_t l = 0; l < shape.n_layer; ++l)
    for (uint32_t h = 0; h < shape.n_kv_head; ++h)
      tables_.emplace_back(layer_key_layouts_[l].capacity, block_slots);
  for (uint32_t l = 0; l < shape.n_layer; ++l) upload_tables(l);
}

const TensorLayout& KvCache::key_layout(uint32_t layer) const { return layer_key_layouts_.at(layer); }
const TensorLayout& KvCache::value_layout(uint32_t layer) const { return layer_value_layouts_.at(layer); }

void KvCache::upload_tables(uint32_t layer) {
  // capacity wide per kv head; a sliding-window layer's tables fill the first slots.
  std::vector<int32_t> flat(size_t{shape_.n_kv_head} * config_.capacity, -1);
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
    auto pos = table(layer, h).positions();
    std::copy(pos.begin(), pos.end(), flat.begin() + size_t{h} * config_.capacity);
  }
  slot_positions_.write_as<int32_t>(flat, layer * slot_positions_stride_);
  std::vector<int32_t> open(shape_.n_kv_head);
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) open[h] = table(layer, h).open_block();
  open_blocks_.write_as<int32_t>(open, layer * open_blocks_stride_);
  if (!rolling_) return;
  // Cache-relative positions: each live slot's rank by position in its table.
  std::vector<int32_t> live;
  for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
    auto pos = table(layer, h).positions();
    live.clear();
    for (int32_t p : pos)
      if (p >= 0) live.push_back(p);
    std::sort(live.begin(), live.end());
    int32_t* out = flat.data() + size_t{h} * config_.capacity;
    for (size_t s = 0; s < pos.size(); ++s)
      out[s] = pos[s] < 0 ? -1
                          : static_cast<int32_t>(std::lower_bound(live.begin(), live.end(), pos[s]) - live.begin());
  }
  rope_positions_.write_as<int32_t>(flat, layer * slot_positions_stride_);
}

gpu::Binding KvCache::rope_positions(uint32_t layer) const {
  if (!rolling_) return slot_positions(layer);
  return {rope_positions_, layer * slot_positions_stride_, uint64_t{shape_.n_kv_head} * config_.capacity * 4};
}

std::vector<int32_t> KvCache::rope_query_positions(std::span<const int32_t> positions) const {
  std::vector<int32_t> live;
  for (int32_t p : table(0, 0).positions())
    if (p >= 0) live.push_back(p);
  std::sort(live.begin(), live.end());
  std::vector<int32_t> ranks(positions.size());
  for (size_t i = 0; i < positions.size(); ++i)
    ranks[i] = static_cast<int32_t>(std::lower_bound(live.begin(), live.end(), positions[i]) - live.begin());
  return ranks;
}

KvCache::~KvCache() = default;
KvCache::KvCache(KvCache&&) noexcept = default;
KvCache& KvCache::operator=(KvCache&&) noexcept = default;

StepPlan KvCache::begin_step(std::span<const int32_t> positions, std::span<const int32_t> tokens) {
  if (positions.empty()) throw std::invalid_argument("KV cache: a step of no tokens");
  StepPlan plan;
  plan.n_tokens = static_cast<uint32_t>(std::min<size_t>(positions.size(), max_batch_));
  if (!eviction_) {
    // Without a policy the whole call must fit before anything is written
    // (a sliding-window layer makes room as it goes: reserve).
    for (uint32_t l = 0; l < shape_.n_layer; ++l)
      for (uint32_t h = 0; h < shape_.n_kv_head; ++h)
        if (shape_.window(l) == 0 && table(l, h).assignable() < positions.size())
          throw context_full(table(l, h), positions.size());
  } else {
    // A step no larger than the room the policy can make (at least one token,
    // so that a full `full` cache says so).
    plan.n_tokens = std::min(plan.n_tokens, std::max(eviction_->room(tables_), 1u));
    SpillHook spill_hook(*this);  // a member would dangle when the cache moves
    eviction_->make_room(tables_, plan.n_tokens, positions.front(), spill_ ? &spill_hook : nullptr);
    for (uint32_t l = 0; l < shape_.n_layer; ++l) upload_tables(l);
  }
  const auto step_positions = positions.first(plan.n_tokens);
  reserve(step_positions, tokens.first(std::min<size_t>(tokens.size(), plan.n_tokens)));
  if (eviction_ && eviction_->policy().needs_scores()) {
    plan.scores = true;
    plan.score_first_query = eviction_->score_first_query(plan.n_tokens);
    plan.scores_accumulate = eviction_->scores_accumulate();
  }
  if (rolling_) plan.rope_query_positions = rope_query_positions(step_positions);
  return plan;
}

void KvCache::end_step() {
  if (spill_) spill_step_done();
  if (!eviction_ || !eviction_->policy().needs_scores()) return;
  ScoreBuffer& scores = eviction_->scores();
  for (uint32_t l = 0; l < shape_.n_layer; ++l) scores_.read_as<float>(scores.layer_values(l), l * scores_stride_);
}

ContextFull KvCache::context_full(const SlotTable& t, size_t incoming) const {
  const uint32_t usable = t.live() + t.assignable();
  return ContextFull(t.live(), static_cast<uint32_t>(incoming), usable,
                     usable < t.capacity()
                         ? fmt::format("kivi2 keys reuse freed slots only as whole blocks of {}", t.block_slots())
                         : std::string{});
}

void KvCache::reserve(std::span<const int32_t> positions, std::span<const int32_t> tokens) {
  const uint32_t n = static_cast<uint32_t>(positions.size());
  if (n > max_batch_)
    throw std::invalid_argument(fmt::format("KV cache: {} tokens in one step, at most {}", n, max_batch_));
  // kivi2 reads the step's own tokens from their qkv rows by position
  // (attention.comp: step_row): a step's positions are consecutive.
  if (config_.k_format == Format::Kivi2 || config_.v_format == Format::Kivi2)
    for (uint32_t i = 1; i < n; ++i)
      if (positions[i] != positions[i - 1] + 1)
        throw std::invalid_argument(fmt::format(
            "KV cache: kivi2 needs a step's positions consecutive; position {} follows {}", positions[i],
            positions[i - 1]));
  for (uint32_t l = 0; l < shape_.n_layer; ++l)
    for (uint32_t h = 0; h < shape_.n_kv_head; ++h)
      if (shape_.window(l) == 0 && table(l, h).assignable() < n) throw context_full(table(l, h), n);
  // A sliding-window layer lets go of what the step's first query cannot see
  // (position + window <= the query's). Only then can it be full, when the
  // positions are not consecutive; nothing has changed the global layers yet.
  if (!positions.empty())
    for (uint32_t l = 0; l < shape_.n_layer; ++l) {
      const uint32_t window = shape_.window(l);
      if (window == 0) continue;
      const int64_t oldest_seen = int64_t{positions.front()} - window + 1;
      for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
        SlotTable& t = tables_[size_t{l} * shape_.n_kv_head + h];
        for (uint32_t s = 0; s < t.high_water(); ++s)
          if (t.position(s) >= 0 && t.position(s) < oldest_seen) t.release(s);
        if (t.assignable() < n) throw context_full(t, n);
      }
    }

  std::vector<int32_t> slots(size_t{n} * shape_.n_kv_head);
  for (uint32_t l = 0; l < shape_.n_layer; ++l) {
    for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
      SlotTable& t = tables_[size_t{l} * shape_.n_kv_head + h];
      for (uint32_t i = 0; i < n; ++i) slots[size_t{i} * shape_.n_kv_head + h] = t.assign(positions[i]);
      if (spill_ && n > 0) last_slots_[size_t{l} * shape_.n_kv_head + h] = slots[size_t{n - 1} * shape_.n_kv_head + h];
    }
    write_slots_.write_as<int32_t>(slots, l * write_slots_stride_);
    upload_tables(l);
  }
  tokens_ = table(shape_.reference_layer(), 0).live();
  if (eviction_) eviction_->written(tables_, positions, tokens);
}

// ----------------------------------------------------------------- eviction

void check_cache_config(const CacheShape& shape, const CacheConfig& config, const EvictionPolicy* policy) {
  if (config.capacity == 0) throw std::invalid_argument("KV cache: capacity must be > 0");
  const TensorLayout k = tensor_layout(encoding(config.k_format, Role::Keys), shape.n_kv_head, config.capacity,
                                       shape.head_dim, config.group_size, config.token_group);
  const TensorLayout v = tensor_layout(encoding(config.v_format, Role::Values), shape.n_kv_head, config.capacity,
                                       shape.head_dim, config.group_size, config.token_group);
  if (shape.has_windows() && policy && policy->spec().flag("rolling"))
    throw std::invalid_argument(fmt::format(
        "{} is rolling, which this model's sliding-window layers do not support (they rotate with their own RoPE "
        "base): leave out `rolling`",
        policy->spec().text()));
  if (!config.spill) return;
  if (shape.has_windows())
    throw std::invalid_argument("--spill does not work with this model's sliding-window layers yet: leave out --spill");
  if (!policy)
    throw std::invalid_argument("--spill keeps what a policy evicts, and this cache has no policy: add one (e.g. "
                                "--policy h2o:budget=64) or leave out --spill");
  // Key bounds are taken over keys as the cache holds them; rolling keeps
  // them un-rotated, so the bounds would not bound the logits attention sees.
  if (policy->spec().flag("rolling"))
    throw std::invalid_argument(fmt::format("--spill does not work with a rolling policy ({}): its keys are stored "
                                            "un-rotated; leave out `rolling` or --spill",
                                            policy->spec().text()));
  [[maybe_unused]] const SpillTier rows_per_token(shape.n_layer, shape.n_kv_head, k, v);  // refuses kivi2 keys
}

void KvCache::set_policy(std::unique_ptr<EvictionPolicy> policy, PinnedSpans pins) {
  if (!policy) throw std::invalid_argument("KV cache: set_policy needs a policy");
  const PolicyShape& ps = policy->shape();
  if (ps.n_layer != shape_.n_layer || ps.n_kv_head != shape_.n_kv_head || ps.capacity != config_.capacity)
    throw std::invalid_argument(fmt::format(
        "policy {} was made for {} layers x {} kv heads x {} slots, the cache has {} x {} x {}",
        policy->name(), ps.n_layer, ps.n_kv_head, ps.capacity, shape_.n_layer, shape_.n_kv_head, config_.capacity));
  check_cache_config(shape_, config_, policy.get());
  // The flag is streamingllm's (kv/policies/streamingllm.cpp); the cache and
  // the forward pass carry it out.
  rolling_ = policy->spec().flag("rolling");
  spill_.reset();
  if (config_.spill) {
    spill_ = std::make_unique<SpillTier>(shape_.n_layer, shape_.n_kv_head, key_layout_, value_layout_,
                                         config_.spill_max_bytes);
    last_slots_.assign(size_t{shape_.n_layer} * shape_.n_kv_head, -1);
  }
  if (rolling_ && !rope_positions_.host_visible())
    rope_positions_ = gpu::Buffer(*ctx_, slot_positions_stride_ * shape_.n_layer, gpu::MemoryUse::Upload,
                                  "kv rope positions");
  const bool needs_scores = policy->needs_scores();
  eviction_ = std::make_unique<EvictionDriver>(std::move(policy), std::move(pins), tables_.front().block_slots());
  if (shape_.has_windows()) {
    std::vector<bool> local(shape_.n_layer);
    for (uint32_t l = 0; l < shape_.n_layer; ++l) local[l] = shape_.window(l) > 0;
    eviction_->set_local_layers(std::move(local));
  }
  if (needs_scores) {
    scores_stride_ = align_up(uint64_t{shape_.n_kv_head} * config_.capacity * 4, kBindingAlign);
    scores_ = gpu::Buffer(*ctx_, scores_stride_ * shape_.n_layer, gpu::MemoryUse::Readback, "kv eviction scores");
  }
  clear();
}

void KvCache::end_prefill() {
  if (!eviction_ || eviction_->prefill_done()) return;
  SpillHook spill_hook(*this);
  eviction_->end_prefill(tables_, spill_ ? &spill_hook : nullptr);
  for (uint32_t l = 0; l < shape_.n_layer; ++l) upload_tables(l);
  tokens_ = table(shape_.reference_layer(), 0).live();
}

gpu::Binding KvCache::scores(uint32_t layer) const {
  return {scores_, layer * scores_stride_, uint64_t{shape_.n_kv_head} * config_.capacity * 4};
}

void KvCache::truncate(int32_t position) {
  uint32_t removed = 0;
  for (uint32_t l = 0; l < shape_.n_layer; ++l) {
    for (uint32_t h = 0; h < shape_.n_kv_head; ++h) {
      SlotTable& t = tables_[size_t{l} * shape_.n_kv_head + h];
      uint32_t before = t.live();
      for (uint32_t s = 0; s < t.capacity(); ++s)
        if (t.position(s) >= position) t.release(s);
      if (l == shape_.reference_layer() && h == 0) removed = before - t.live();
    }
    upload_tables(l);
  }
  tokens_ -= removed;
  if (spill_) {  // spilled positions past the cut would come back as the wrong tokens: forget them all
    spill_->clear();
    spill_out_pending_.clear();
    spill_query_valid_ = false;
  }
  if (eviction_) eviction_->truncated(position);
}

void KvCache::clear() {
  for (auto& t : tables_) t.clear();
  for (uint32_t l = 0; l < shape_.n_layer; ++l) upload_tables(l);
  tokens_ = 0;
  if (spill_) {
    spill_->clear();
    spill_out_pending_.clear();
    spill_in_pending_.clear();
    spill_query_valid_ = false;
    recalls_ = 0;
  }
  if (eviction_) eviction_->clear();
  if (scores_.host_visible()) scores_.fill_zero();
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
