// The GPU forward pass. Reads top to bottom like models/reference.cpp:
// embed -> per layer { rmsnorm -> q|k|v -> rope + kv write -> attention ->
// (kivi2 values: the f16 window) -> wo (+residual) -> rmsnorm -> gate|up -> swiglu -> down (+residual) } ->
// final norm -> logits. One command buffer per batch, one submit, one wait.
#include "models/forward.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "shaders/common/params.h"

namespace kvscope {

namespace {

using gpu::Binding;
using gpu::Buffer;
using gpu::MemoryUse;
using shaders::Id;

int type_index(GgmlType t) { return static_cast<int>(weight_shader_index(t)); }

// Threads per workgroup (specialization constant 0 of every shader): a power
// of two, at least the device's subgroup size, 64 where the device allows.
uint32_t workgroup_size(const gpu::Context& ctx) {
  uint32_t wg = 64;
  while (wg < ctx.subgroup_size()) wg *= 2;
  while (wg > ctx.info().max_workgroup_size_x && wg > 8) wg /= 2;
  return wg;
}

// Launch geometry; each must agree with the "groups:" line of its shader in
// shaders/common/params.h.
uint32_t matvec_groups(uint64_t rows, uint32_t rows_per_group) { return gpu::ceil_div(rows, rows_per_group); }

// On a GPU, several invocations share a weight row so that neighbouring
// invocations read neighbouring words (coalesced), then reduce in shared
// memory; matmul works on shared-memory tiles. On a CPU device (lavapipe) the
// invocations of a subgroup are SIMD lanes of one core and every barrier is a
// coroutine switch: one row per invocation, no reduction, no tiles (measured
// 2.2x faster decode there).
bool one_row_per_invocation(const gpu::Context& ctx) { return ctx.info().type == "cpu"; }
std::pair<uint32_t, uint32_t> matmul_groups(uint64_t rows, uint32_t n_tokens, uint32_t wg, bool row_per_invocation) {
  if (row_per_invocation) return {gpu::ceil_div(rows, wg), gpu::ceil_div(n_tokens, KVSCOPE_MATMUL_CPU_TOKENS)};
  return {gpu::ceil_div(rows, KVSCOPE_MATMUL_TILE_ROWS), gpu::ceil_div(n_tokens, wg / 2)};
}
uint32_t elementwise_groups(uint64_t n, uint32_t wg) { return gpu::ceil_div(n, wg); }

// Attention runs one workgroup per (head, token): a decode step is only
// n_head workgroups, too few to fill a GPU, so there each gets 256
// invocations that split the slot range (attention.comp). A CPU device runs
// workgroups on its few cores anyway and keeps the common size.
uint32_t attention_workgroup_size(const gpu::Context& ctx, uint32_t wg) {
  if (one_row_per_invocation(ctx)) return wg;
  uint32_t a = std::max<uint32_t>(wg, 256);
  while (a > ctx.info().max_workgroup_size_x && a > wg) a /= 2;
  return a;
}

// A long cache on a GPU: still n_head workgroups per decode token, so each
// takes as many invocations as the device allows (up to 1024): four times
// the slots per pass, four times the value slices. Short caches keep 256,
// whose reductions are shorter.
constexpr uint32_t kWideAttentionSlots = 512;
uint32_t attention_wide_workgroup_size(const gpu::Context& ctx, uint32_t wg) {
  if (one_row_per_invocation(ctx)) return wg;
  uint32_t a = 1024;
  while (a > ctx.info().max_workgroup_size_x && a > wg) a /= 2;
  return std::max(a, wg);
}

}  // namespace

void GpuModel::make_pipelines() {
  const gpu::Context& ctx = *ctx_;
  const uint32_t wg = wg_ = workgroup_size(ctx);
  row_per_invocation_ = one_row_per_invocation(ctx);
  matvec_rows_ = row_per_invocation_ ? wg * KVSCOPE_MATVEC_CPU_ROWS_PER_INVOCATION
                                     : std::min<uint32_t>(wg, KVSCOPE_MATVEC_ROWS_PER_GROUP);
  // `texel`: mask of the bindings read as texel buffers (weight values, params.h).
  auto make = [&](Id id, uint32_t bindings, uint32_t push, std::vector<uint32_t> spec = {}, uint32_t texel = 0) {
    spec.insert(spec.begin(), wg);
    return gpu::Pipeline(ctx, gpu::PipelineDesc{id, bindings, push, spec, texel});
  };
  using namespace params;
  Pipelines& P = pipelines_;
  // Only the weight types this model uses: lavapipe compiles each pipeline
  // through LLVM, so unused variants would cost start-up time.
  std::set<int> used = {type_index(weights_.token_embd.type), type_index(weights_.logits_weight().type)};
  for (const auto& L : weights_.layers) {
    for (const GpuTensor* t : {&L.wo, &L.w2}) used.insert(type_index(t->type));
    for (const FusedProjection* f : {&L.wqkv, &L.w13})
      for (const auto& part : f->parts) used.insert(type_index(part.tensor.type));
  }
  for (int i : used) {
    const WeightShaders& w = kWeightShaders[i];
    P.matvec[i] = make(w.matvec, kMatvecOp.bindings, kMatvecOp.push_bytes, {matvec_rows_}, kMatvecOp.texel_bindings);
    P.matmul[i] = make(w.matmul, kMatmulOp.bindings, kMatmulOp.push_bytes, {row_per_invocation_ ? 1u : 0u},
                       kMatmulOp.texel_bindings);
  }
  const int embed_type = type_index(weights_.token_embd.type);
  P.embed[embed_type] = make(kWeightShaders[embed_type].embed, kEmbedOp.bindings, kEmbedOp.push_bytes, {},
                             kEmbedOp.texel_bindings);
  P.rmsnorm = make(Id::rmsnorm, 3, sizeof(RmsNormParams));
  P.swiglu = make(Id::swiglu, 2, sizeof(SwigluParams));
  if (cfg_.qkv_bias) P.add = make(Id::add, 3, sizeof(AddParams));
}

namespace {
// shaders.cmake's rows per (key format, value format), indexed by kv::Format.
constexpr Id kRopeKvWrite[5][5] = {
    {Id::rope_kv_write_f32_f32, Id::rope_kv_write_f32_f16, Id::rope_kv_write_f32_q8, Id::rope_kv_write_f32_q4, Id::rope_kv_write_f32_kivi2},
    {Id::rope_kv_write_f16_f32, Id::rope_kv_write_f16_f16, Id::rope_kv_write_f16_q8, Id::rope_kv_write_f16_q4, Id::rope_kv_write_f16_kivi2},
    {Id::rope_kv_write_q8_f32, Id::rope_kv_write_q8_f16, Id::rope_kv_write_q8_q8, Id::rope_kv_write_q8_q4, Id::rope_kv_write_q8_kivi2},
    {Id::rope_kv_write_q4_f32, Id::rope_kv_write_q4_f16, Id::rope_kv_write_q4_q8, Id::rope_kv_write_q4_q4, Id::rope_kv_write_q4_kivi2},
    {Id::rope_kv_write_kivi2_f32, Id::rope_kv_write_kivi2_f16, Id::rope_kv_write_kivi2_q8, Id::rope_kv_write_kivi2_q4, Id::rope_kv_write_kivi2_kivi2},
};
constexpr Id kAttention[5][5] = {
    {Id::attention_f32_f32, Id::attention_f32_f16, Id::attention_f32_q8, Id::attention_f32_q4, Id::attention_f32_kivi2},
    {Id::attention_f16_f32, Id::attention_f16_f16, Id::attention_f16_q8, Id::attention_f16_q4, Id::attention_f16_kivi2},
    {Id::attention_q8_f32, Id::attention_q8_f16, Id::attention_q8_q8, Id::attention_q8_q4, Id::attention_q8_kivi2},
    {Id::attention_q4_f32, Id::attention_q4_f16, Id::attention_q4_q8, Id::attention_q4_q4, Id::attention_q4_kivi2},
    {Id::attention_kivi2_f32, Id::attention_kivi2_f16, Id::attention_kivi2_q8, Id::attention_kivi2_q4, Id::attention_kivi2_kivi2},
};
static_assert(int(kv::Format::Kivi2) == 4, "kRopeKvWrite/kAttention are indexed by kv::Format");

params::KvLayout kv_layout(const kv::KvCache& cache, uint32_t layer) {
  const kv::TensorLayout &K = cache.key_layout(layer), &V = cache.value_layout(layer);
  const bool v_window = V.encoding == kv::Encoding::Q2;
  return {cache.config().group_size, K.row_words, K.code_words, V.row_words, V.code_words,
          K.token_group, K.n_blocks, K.params_offset, K.recent_offset, v_window ? V.recent_rows : 0u,
          v_window ? V.recent_offset : 0u};
}
}  // namespace

void GpuModel::make_kv_pipelines(const kv::CacheConfig& config) {
  const int k = int(config.k_format), v = int(config.v_format);
  Pipelines& P = pipelines_;
  if (P.attention[k][v].handle() != VK_NULL_HANDLE) return;
  auto make = [&](Id id, uint32_t bindings, uint32_t push, uint32_t wg) {
    return gpu::Pipeline(*ctx_, gpu::PipelineDesc{id, bindings, push, {wg}, 0});
  };
  P.rope_kv_write[k][v] = make(kRopeKvWrite[k][v], 6, sizeof(params::RopeKvWriteParams), wg_);
  P.attention[k][v] =
      make(kAttention[k][v], 11, sizeof(params::AttentionParams), attention_workgroup_size(*ctx_, wg_));
  if (const uint32_t wide = attention_wide_workgroup_size(*ctx_, wg_); wide > attention_workgroup_size(*ctx_, wg_))
    P.attention_wide[k][v] = make(kAttention[k][v], 11, sizeof(params::AttentionParams), wide);
  if (config.k_format == kv::Format::Kivi2 && P.kivi_key_write.handle() == VK_NULL_HANDLE)
    P.kivi_key_write = make(Id::kivi_key_write, 4, sizeof(params::KiviKeyWriteParams), wg_);
  if (config.v_format == kv::Format::Kivi2 && P.kivi_value_window.handle() == VK_NULL_HANDLE)
    P.kivi_value_window = make(Id::kivi_value_window, 3, sizeof(params::KiviValueWindowParams), wg_);
}

void GpuModel::make_scores_pipeline() {
  if (pipelines_.attention_scores.handle() != VK_NULL_HANDLE) return;
  pipelines_.attention_scores = gpu::Pipeline(
      *ctx_, gpu::PipelineDesc{Id::attention_scores, 4, sizeof(params::AttentionScoresParams), {wg_}, 0});
}

void GpuModel::check_fits_device(const GgufFile& file) const {
  // Device-local activations of one batch (the buffers the constructor makes);
  // tokens, positions and logits live in host-visible memory.
  const uint64_t b = max_batch_, dim = cfg_.dim, q_dim = cfg_.q_dim(), kv_dim = cfg_.kv_dim(), ffn = cfg_.ffn_dim;
  const uint64_t activations =
      4 * (b * dim + 2 * b * std::max(dim, q_dim) + b * (q_dim + 2 * kv_dim) + 3 * b * ffn +
           b * cfg_.n_head * uint64_t{capacity_} + 2 * dim);
  const uint64_t weights = weight_device_bytes(file, cfg_);
  const uint64_t available = ctx_->info().device_local_bytes;
  if (weights + activations <= available) return;
  auto gib = [](uint64_t bytes) {
    return bytes >= (1ull << 30) ? fmt::format("{:.2f} GiB", double(bytes) / double(1ull << 30))
                                 : fmt::format("{:.1f} MiB", double(bytes) / double(1ull << 20));
  };
  throw gpu::OutOfMemory(fmt::format(
      "{}: the model needs {} of device memory ({} of weights, {} of activations for batches of {} tokens "
      "at a context of {}), before its KV cache; {} has {}. Use a smaller model or a smaller weight type "
      "(kvscope quantize IN OUT Q4_0), or another device (--device; kvscope devices lists them)",
      file.path(), gib(weights + activations), gib(weights), gib(activations), max_batch_, capacity_,
      ctx_->info().name, gib(available)));
}

GpuModel::GpuModel(gpu::Context& ctx, const GgufFile& file, uint32_t max_batch, uint32_t capacity)
    : ctx_(&ctx), cfg_(read_llama_config(file)), capacity_(capacity), recorder_(ctx) {
  if (capacity == 0) throw std::invalid_argument("context length must be > 0");
  // The attention probe row of every batch token must fit one binding.
  const uint64_t probe_row = uint64_t{cfg_.n_head} * capacity * 4;
  const uint64_t logits_row = uint64_t{cfg_.n_vocab} * 4;
  const uint64_t limit = ctx.max_binding_bytes();
  max_batch_ = static_cast<uint32_t>(std::min<uint64_t>({max_batch, limit / probe_row, limit / logits_row}));
  if (max_batch_ == 0)
    throw std::invalid_argument(fmt::format(
        "a context of {} tokens needs {} bytes of attention scratch per token, more than one "
        "binding of {} bytes on {}; use a smaller context (-c)",
        capacity, probe_row, limit, ctx.info().name));

  check_fits_device(file);
  weights_ = upload_weights(ctx, file, cfg_, capacity);
  // The qkv and gate|up rows are laid out from the config; the tensors must agree.
  for (uint32_t l = 0; l < cfg_.n_layer; ++l) {
    const GpuLayer& L = weights_.layers[l];
    if (L.wqkv.out_width != cfg_.q_dim() + 2 * cfg_.kv_dim() || L.w13.out_width != 2 * cfg_.ffn_dim)
      throw std::invalid_argument(fmt::format(
          "layer {}: attn_q/k/v have {} rows together and ffn_gate/up {}; the model's hyperparameters "
          "say {} and {}: the file is inconsistent",
          l, L.wqkv.out_width, L.w13.out_width, cfg_.q_dim() + 2 * cfg_.kv_dim(), 2 * cfg_.ffn_dim));
  }
  make_pipelines();

  const uint64_t b = max_batch_;
  tokens_ = Buffer(ctx, b * 4, MemoryUse::Upload, "tokens");
  positions_ = Buffer(ctx, b * 4, MemoryUse::Upload, "positions");
  rope_positions_ = Buffer(ctx, b * 4, MemoryUse::Upload, "rope positions");
  x_ = Buffer(ctx, b * cfg_.dim * 4, MemoryUse::Device, "x");
  xb_ = Buffer(ctx, b * std::max(cfg_.dim, cfg_.q_dim()) * 4, MemoryUse::Device, "xb");
  xb2_ = Buffer(ctx, b * std::max(cfg_.dim, cfg_.q_dim()) * 4, MemoryUse::Device, "xb2");
  qkv_ = Buffer(ctx, b * (cfg_.q_dim() + 2 * cfg_.kv_dim()) * 4, MemoryUse::Device, "qkv");
  gate_up_ = Buffer(ctx, b * 2 * cfg_.ffn_dim * 4, MemoryUse::Device, "gate|up");
  hb_ = Buffer(ctx, b * cfg_.ffn_dim * 4, MemoryUse::Device, "hb");
  probs_ = Buffer(ctx, b * probe_row, MemoryUse::Device, "attention probe");
  x_last_ = Buffer(ctx, cfg_.dim * 4, MemoryUse::Device, "x last");
  xn_last_ = Buffer(ctx, cfg_.dim * 4, MemoryUse::Device, "x last normed");
  logits_ = Buffer(ctx, b * logits_row, MemoryUse::Readback, "logits");
}

kv::CacheShape cache_shape_of(const LlamaConfig& cfg) {
  kv::CacheShape shape{cfg.n_layer, cfg.n_kv_head, cfg.head_dim};
  if (cfg.has_local_layers())
    for (uint32_t l = 0; l < cfg.n_layer; ++l) shape.windows.push_back(cfg.layer_window(l));
  return shape;
}

kv::CacheShape GpuModel::cache_shape() const { return cache_shape_of(cfg_); }

void GpuModel::set_profiling(bool on) {
  if (on && !timer_) timer_ = std::make_unique<gpu::Timer>(*ctx_, 4096);
  if (!on) timer_.reset();
}

std::map<std::string, double> GpuModel::take_profile() { return std::exchange(profile_, {}); }

std::span<const float> GpuModel::forward(std::span<const int32_t> tokens, std::span<const int32_t> positions,
                                         kv::KvCache& cache, LogitsWanted wanted, ForwardOutputs& out) {
  AttentionProbe* probe = &out.probe;
  std::vector<float>& logits_host = out.logits;
  if (tokens.size() != positions.size()) throw std::invalid_argument("forward: tokens and positions differ in length");
  if (tokens.empty()) throw std::invalid_argument("forward: no tokens");
  for (int32_t t : tokens)
    if (t < 0 || static_cast<uint32_t>(t) >= cfg_.n_vocab)
      throw std::invalid_argument(fmt::format("token id {} is outside the vocabulary of {}", t, cfg_.n_vocab));
  if (cache.capacity() > capacity_)
    throw std::invalid_argument(fmt::format("a cache of {} slots is larger than this model was built for ({})",
                                            cache.capacity(), capacity_));
  make_kv_pipelines(cache.config());
  probe_ = probe && probe->on ? probe : nullptr;
  if (probe) probe->position_ = -1;
  if (probe_ && !probe_->readback_.host_visible()) {
    probe_->readback_ = gpu::Buffer(*ctx_, uint64_t{cfg_.n_layer} * cfg_.n_head * capacity_ * sizeof(float),
                                    gpu::MemoryUse::Readback, "attention probe readback");
    probe_->n_layer_ = cfg_.n_layer;
    probe_->n_head_ = cfg_.n_head;
    probe_->model_capacity_ = capacity_;
  }

  const size_t n_vocab = cfg_.n_vocab;
  logits_host.resize(wanted == LogitsWanted::All ? tokens.size() * n_vocab : n_vocab);
  for (size_t start = 0; start < tokens.size();) {
    // The cache plans the step: its eviction driver makes room, the tokens
    // get slots, and the plan says what to record for them.
    const kv::StepPlan plan = cache.begin_step(positions.subspan(start), tokens.subspan(start));
    const size_t n = plan.n_tokens;
    if (plan.scores) make_scores_pipeline();
    const bool last_batch = start + n == tokens.size();
    tokens_.write_as<int32_t>(tokens.subspan(start, n));
    positions_.write_as<int32_t>(positions.subspan(start, n));
    if (!plan.rope_query_positions.empty()) rope_positions_.write_as<int32_t>(plan.rope_query_positions);
    const LogitsWanted w = wanted == LogitsWanted::All ? LogitsWanted::All : LogitsWanted::Last;
    record_batch(tokens.subspan(start, n), cache, plan, w);
    cache.end_step();
    if (wanted == LogitsWanted::All || last_batch) {  // the last batch's logits are the ones asked for
      const float* src = static_cast<const float*>(logits_.mapped());
      if (w == LogitsWanted::All)
        std::memcpy(logits_host.data() + start * n_vocab, src, n * n_vocab * sizeof(float));
      else
        std::memcpy(logits_host.data(), src, n_vocab * sizeof(float));
    }
    start += n;
  }
  if (probe_) probe_->position_ = positions.back(), probe_->cache_capacity_ = cache.capacity();
  probe_ = nullptr;
  return logits_host;
}

std::span<const float> AttentionProbe::row(uint32_t layer) const {
  if (position_ < 0 || layer >= n_layer_) return {};
  const size_t layer_stride = size_t{n_head_} * model_capacity_;
  return {static_cast<const float*>(readback_.mapped()) + layer * layer_stride, size_t{n_head_} * cache_capacity_};
}

void GpuModel::project(const FusedProjection& f, const Buffer& x, Buffer& y, uint32_t n_tokens) {
  for (const auto& part : f.parts)
    matmul(part.tensor, x, y, n_tokens, uint32_t(f.out_width), false, uint32_t(part.out_offset));
}

void GpuModel::matmul(const GpuTensor& w, const Buffer& x, Buffer& y, uint32_t n_tokens, uint32_t y_stride,
                      bool accumulate, uint32_t y_offset) {
  const int ti = type_index(w.type);
  for (const auto& chunk : w.chunks()) {
    if (n_tokens == 1) {
      params::MatVecParams p{uint32_t(chunk.rows), uint32_t(w.cols), 1, y_stride,
                             y_offset + uint32_t(chunk.first_row), accumulate ? 1u : 0u};
      recorder_.dispatch(pipelines_.matvec[ti], {chunk.values, chunk.scales, x, y}, p, matvec_groups(chunk.rows, matvec_rows_));
    } else {
      params::MatMulParams p{uint32_t(chunk.rows), uint32_t(w.cols), n_tokens, y_stride,
                             y_offset + uint32_t(chunk.first_row), accumulate ? 1u : 0u};
      auto [gx, gy] = matmul_groups(chunk.rows, n_tokens, wg_, row_per_invocation_);
      recorder_.dispatch(pipelines_.matmul[ti], {chunk.values, chunk.scales, x, y}, p, gx, gy);
    }
  }
}

void GpuModel::add_to_residual(const GpuTensor& w, const Buffer& in, const Buffer& post_norm, uint32_t n) {
  if (post_norm.size() == 0) {  // x += w . in, fused into the matmul
    matmul(w, in, x_, n, cfg_.dim, true);
    recorder_.barrier();
    return;
  }
  // gemma3: x += rmsnorm(w . in) * post_norm
  matmul(w, in, xb_, n, cfg_.dim, false);
  recorder_.barrier();
  params::RmsNormParams p{n, cfg_.dim, cfg_.norm_eps};
  p.accumulate = 1;
  recorder_.dispatch(pipelines_.rmsnorm, {xb_, post_norm, x_}, p, n);
  recorder_.barrier();
}

void GpuModel::record_batch(std::span<const int32_t> tokens, kv::KvCache& cache, const kv::StepPlan& plan,
                            LogitsWanted wanted) {
  const uint32_t n = static_cast<uint32_t>(tokens.size());
  const uint32_t dim = cfg_.dim, hd = cfg_.head_dim;
  const uint32_t ffn = cfg_.ffn_dim;
  auto& P = pipelines_;
  auto& rec = recorder_;
  const int kf = int(cache.config().k_format), vf = int(cache.config().v_format);
  // RoPE frequency divisors of global layers (Llama 3, linear scaling);
  // without them the binding is not read.
  const Buffer& freq_factors = weights_.rope_freqs.size() > 0 ? weights_.rope_freqs : positions_;

  rec.begin(timer_.get());
  cache.record_spill_transfers(rec);  // --spill: evicted rows out, recalled rows in, before any write

  const GpuTensor& embd = weights_.token_embd;
  for (const auto& chunk : embd.chunks()) {
    params::EmbedParams p{n, dim, uint32_t(chunk.rows), uint32_t(chunk.first_row), cfg_.embed_scale};
    rec.dispatch(P.embed[type_index(embd.type)], {tokens_, chunk.values, chunk.scales, x_}, p, n);
  }
  rec.barrier();

  for (uint32_t l = 0; l < cfg_.n_layer; ++l) {
    const GpuLayer& L = weights_.layers[l];
    // attention block
    rec.dispatch(P.rmsnorm, {x_, L.attn_norm, xb_}, params::RmsNormParams{n, dim, cfg_.norm_eps}, n);
    rec.barrier();
    project(L.wqkv, xb_, qkv_, n);
    rec.barrier();
    if (cfg_.qkv_bias) {  // one q|k|v bias row added to every token's qkv row, in place
      const uint32_t width = uint32_t(L.wqkv.out_width), total = n * width;
      rec.dispatch(P.add, {qkv_, L.qkv_bias, qkv_}, params::AddParams{total, width}, elementwise_groups(total, wg_));
      rec.barrier();
    }
    const uint32_t qkv_stride = uint32_t(L.wqkv.out_width);
    const params::KvLayout kv = kv_layout(cache, l);
    const uint32_t slots = cache.layer_slots(l);  // fewer than the capacity on a sliding-window layer
    if (cfg_.qk_norm) {  // qwen3: every q head, then every k head, RMS-normed in place inside the q|k|v rows
      params::RmsNormParams qn{n * cfg_.n_head, hd, cfg_.norm_eps, cfg_.n_head, qkv_stride, 0};
      rec.dispatch(P.rmsnorm, {qkv_, L.q_norm, qkv_}, qn, n * cfg_.n_head);
      params::RmsNormParams kn{n * cfg_.n_kv_head, hd, cfg_.norm_eps, cfg_.n_kv_head, qkv_stride, cfg_.q_dim()};
      rec.dispatch(P.rmsnorm, {qkv_, L.k_norm, qkv_}, kn, n * cfg_.n_kv_head);
      rec.barrier();
    }
    // A sliding-window layer (gemma3) rotates with its own theta and no factors.
    const float theta = cfg_.layer_rope_theta(l);
    const uint32_t has_factors = cfg_.layer_rope_factors(l) ? 1u : 0u;
    params::RopeKvWriteParams rp{n, cfg_.n_head, cfg_.n_kv_head, hd, cfg_.rope_dim, theta, slots, qkv_stride, kv};
    rp.rope_mode = uint32_t(cfg_.rope_mode);
    rp.has_freq_factors = has_factors;
    rp.mscale = cfg_.rope_attn_factor;
    rp.keys_unrotated = cache.rolling() ? 1u : 0u;
    rp.hadamard = cache.keys_hadamard() ? 1u : 0u;
    // Rolling: q turns by its cache-relative position, keys are stored as they are.
    const Buffer& rope_query_positions = cache.rolling() ? rope_positions_ : positions_;
    rec.dispatch(P.rope_kv_write[kf][vf],
                 {qkv_, rope_query_positions, cache.write_slots(l), cache.keys(l), cache.values(l), freq_factors}, rp,
                 cfg_.n_head + cfg_.n_kv_head, n);
    rec.barrier();
    params::KiviKeyWriteParams kp{n, cfg_.n_kv_head, hd, slots, qkv_stride, cfg_.q_dim(), kv};
    if (kf == int(kv::Format::Kivi2)) {  // keys left rotated in qkv_: the blocks the step completed quantized
      rec.dispatch(P.kivi_key_write, {qkv_, cache.write_slots(l), cache.open_blocks(l), cache.keys(l)}, kp,
                   cfg_.n_kv_head);
      rec.barrier();
    }
    params::AttentionParams ap{n, cfg_.n_head, cfg_.n_kv_head, hd, cache.capacity(), cache.scan_slots(l),
                               cfg_.attn_scale, qkv_stride, kv};
    if (cache.rolling()) ap.rolling = 1, ap.rope_dim = cfg_.rope_dim, ap.rope_theta = theta;
    ap.rope_mode = uint32_t(cfg_.rope_mode);
    ap.has_freq_factors = has_factors;
    ap.rope_mscale = cfg_.rope_attn_factor;
    ap.window = cfg_.layer_window(l);
    ap.kv_slots = slots;
    ap.step_rows = 1;
    ap.hadamard = cache.rolling() && cache.keys_hadamard() ? 1u : 0u;
    ap.sparse_v = cache.config().sparse_v;  // the qkv rows are the step's (kivi2 reads its recent keys and values there)
    const bool wide = P.attention_wide[kf][vf].handle() != VK_NULL_HANDLE && cache.scan_slots(l) > kWideAttentionSlots;
    rec.dispatch(wide ? P.attention_wide[kf][vf] : P.attention[kf][vf],
                 {qkv_, cache.keys(l), cache.values(l), cache.slot_positions(l), positions_, xb2_, probs_,
                  cache.open_blocks(l), cache.rope_positions(l), freq_factors, cache.write_slots(l)},
                 ap, cfg_.n_head, n);
    rec.barrier();
    // kivi2, after attention: the step's newest keys and values into the f16 windows
    if (kf == int(kv::Format::Kivi2)) {
      kp.phase = 1;
      rec.dispatch(P.kivi_key_write, {qkv_, cache.write_slots(l), cache.open_blocks(l), cache.keys(l)}, kp,
                   cfg_.n_kv_head);
    }
    if (vf == int(kv::Format::Kivi2)) {
      params::KiviValueWindowParams wp{n, cfg_.n_kv_head, hd, qkv_stride, cfg_.q_dim() + cfg_.kv_dim(), kv};
      rec.dispatch(P.kivi_value_window, {qkv_, positions_, cache.values(l)}, wp, cfg_.n_kv_head,
                   std::min(n, kv.v_window));
    }
    if (kf == int(kv::Format::Kivi2) || vf == int(kv::Format::Kivi2)) rec.barrier();
    cache.record_spill_query(rec, l, cfg_.n_head, qkv_, uint64_t{n - 1} * qkv_stride * 4, probs_,
                             uint64_t{n - 1} * cfg_.n_head * cache.capacity() * 4);  // --spill only
    if (plan.scores && cfg_.layer_window(l) == 0) {  // per-slot scores for the policy (global layers), from the probs rows
      params::AttentionScoresParams sp{n, cfg_.n_head, cfg_.n_kv_head, cache.capacity(), cache.scan_slots(l),
                                       plan.score_first_query, plan.scores_accumulate ? 1u : 0u};
      rec.dispatch(P.attention_scores, {probs_, cache.slot_positions(l), positions_, cache.scores(l)}, sp,
                   elementwise_groups(cache.capacity(), wg_), cfg_.n_kv_head);
    }
    if (probe_) {  // the last token's rows ([n_head][cache capacity]) into this layer's place
      const uint64_t row_bytes = uint64_t{cfg_.n_head} * cache.capacity() * sizeof(float);
      const uint64_t layer_stride = uint64_t{cfg_.n_head} * capacity_ * sizeof(float);
      rec.copy(probs_, uint64_t{n - 1} * row_bytes, probe_->readback_, uint64_t{l} * layer_stride, row_bytes);
    }
    add_to_residual(L.wo, xb2_, L.post_attn_norm, n);

    // feed-forward block
    rec.dispatch(P.rmsnorm, {x_, L.ffn_norm, xb_}, params::RmsNormParams{n, dim, cfg_.norm_eps}, n);
    rec.barrier();
    project(L.w13, xb_, gate_up_, n);
    rec.barrier();
    rec.dispatch(P.swiglu, {gate_up_, hb_},
                 params::SwigluParams{n, ffn, uint32_t(L.w13.out_width), uint32_t(cfg_.ffn_act)},
                 elementwise_groups(ffn, wg_), n);
    rec.barrier();
    add_to_residual(L.w2, hb_, L.post_ffn_norm, n);
  }

  // final norm and logits: of every token, or of the last one only
  if (wanted == LogitsWanted::All) {
    rec.dispatch(P.rmsnorm, {x_, weights_.output_norm, xb_}, params::RmsNormParams{n, dim, cfg_.norm_eps}, n);
    rec.barrier();
    matmul(weights_.logits_weight(), xb_, logits_, n, cfg_.n_vocab, false);
  } else {
    rec.copy(x_, uint64_t{n - 1} * dim * 4, x_last_, 0, dim * 4);
    rec.barrier();
    rec.dispatch(P.rmsnorm, {x_last_, weights_.output_norm, xn_last_}, params::RmsNormParams{1, dim, cfg_.norm_eps}, 1);
    rec.barrier();
    matmul(weights_.logits_weight(), xn_last_, logits_, 1, cfg_.n_vocab, false);
  }
  rec.submit_and_wait();
  last_dispatches_ = rec.dispatch_count();
  if (timer_)
    for (const auto& [name, ms] : timer_->collect()) profile_[name] += ms;
}

}  // namespace kvscope
