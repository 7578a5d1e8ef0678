#include "models/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "models/gpu_layout.h"

namespace kvscope {

namespace {

// Row chunks start at multiples of this many rows so that every chunk's
// binding offsets are aligned for any device (value rows are whole 16-byte
// texels and scale rows whole words, so offsets are multiples of 256 * 4 bytes,
// while Vulkan caps both offset alignments at 256).
constexpr uint64_t kChunkRowAlign = 256;

gpu::Buffer upload_floats(const gpu::Context& ctx, const GgufFile& file, const std::string& name) {
  const GgufTensorInfo& t = file.tensor(name);
  std::vector<float> v(t.n_elements);
  dequantize_row(t.type, {t.data, t.n_bytes}, v);
  gpu::Buffer b(ctx, v.size() * sizeof(float), gpu::MemoryUse::Device, name.c_str());
  b.write_as<float>(v);
  return b;
}

// Several f32 vectors end to end in one buffer (the q | k | v biases, laid
// out like the fused projection's output row).
gpu::Buffer upload_concatenated_floats(const gpu::Context& ctx, const GgufFile& file,
                                       const std::vector<std::string>& names) {
  std::vector<float> v;
  for (const std::string& name : names) {
    const GgufTensorInfo& t = file.tensor(name);
    const size_t start = v.size();
    v.resize(start + t.n_elements);
    dequantize_row(t.type, {t.data, t.n_bytes}, std::span(v).subspan(start));
  }
  gpu::Buffer b(ctx, v.size() * sizeof(float), gpu::MemoryUse::Device, names[0].c_str());
  b.write_as<float>(v);
  return b;
}

// `data` holds rows x cols elements of `type` as GGUF stores them.
GpuTensor upload_rows(const gpu::Context& ctx, const std::string& name, GgmlType type, const uint8_t* data,
                      uint64_t rows, uint64_t cols) {
  GpuWeight w = repack_for_gpu(type, data, rows, cols);
  GpuTensor g;
  g.type = w.type;
  g.rows = w.rows;
  g.cols = w.cols;
  g.value_row_bytes = w.value_row_bytes();
  g.scale_row_bytes = w.scale_row_bytes();
  g.values = gpu::Buffer(ctx, w.values.size() * 4, gpu::MemoryUse::Device, name.c_str());
  g.values.write_as<uint32_t>(w.values);
  if (w.scales.empty()) {
    g.scales = gpu::Buffer(ctx, 16, gpu::MemoryUse::Device, "unused scales");
  } else {
    g.scales = gpu::Buffer(ctx, w.scales.size() * 4, gpu::MemoryUse::Device, name.c_str());
    g.scales.write_as<uint32_t>(w.scales);
  }
  // Values are bound as texel buffers, scales as storage buffers: each kind
  // has its own limit per binding (maxTexelBufferElements texels can be as
  // few as 65536, i.e. 1 MiB, on some devices).
  const uint64_t value_limit = ctx.max_texel_binding_bytes();
  const uint64_t scale_limit = ctx.max_binding_bytes();
  if (g.values.size() <= value_limit && g.scales.size() <= scale_limit) {
    g.rows_per_chunk = g.rows;
  } else {
    uint64_t rows_fit = value_limit / g.value_row_bytes;
    if (g.scale_row_bytes) rows_fit = std::min(rows_fit, scale_limit / g.scale_row_bytes);
    g.rows_per_chunk = rows_fit / kChunkRowAlign * kChunkRowAlign;
    if (g.rows_per_chunk == 0)
      throw gpu::GpuError(fmt::format(
          "{}: one block of {} rows ({} bytes of values, {} of scales) does not fit one binding "
          "({} bytes per texel-buffer binding, {} per storage-buffer binding) on {}; this device "
          "cannot run this model",
          name, kChunkRowAlign, kChunkRowAlign * g.value_row_bytes, kChunkRowAlign * g.scale_row_bytes,
          value_limit, scale_limit, ctx.info().name));
  }
  return g;
}

uint64_t rows_of(const GgufTensorInfo& t) { return t.shape.size() > 1 ? t.shape[1] : 1; }

GpuTensor upload_tensor(const gpu::Context& ctx, const GgufFile& file, const std::string& name) {
  const GgufTensorInfo& t = file.tensor(name);
  return upload_rows(ctx, name, t.type, t.data, rows_of(t), t.shape[0]);
}

// One tensor of all parts' rows when they share type and row length, else one
// per part (mixed-type files still load, at one dispatch per part).
FusedProjection upload_fused(const gpu::Context& ctx, const GgufFile& file, const std::vector<std::string>& names) {
  FusedProjection f;
  std::vector<const GgufTensorInfo*> infos;
  for (const std::string& name : names) infos.push_back(&file.tensor(name));
  bool same = true;
  for (const GgufTensorInfo* t : infos)
    same = same && t->type == infos[0]->type && t->shape[0] == infos[0]->shape[0];
  if (same) {
    std::vector<uint8_t> bytes;
    uint64_t rows = 0;
    for (const GgufTensorInfo* t : infos) {
      bytes.insert(bytes.end(), t->data, t->data + t->n_bytes);
      rows += rows_of(*t);
    }
    std::string label = names[0];
    for (size_t i = 1; i < names.size(); ++i) label += "|" + names[i];
    f.parts.push_back({upload_rows(ctx, label, infos[0]->type, bytes.data(), rows, infos[0]->shape[0]), 0});
    f.out_width = rows;
    return f;
  }
  for (size_t i = 0; i < infos.size(); ++i) {
    f.parts.push_back({upload_tensor(ctx, file, names[i]), f.out_width});
    f.out_width += rows_of(*infos[i]);
  }
  return f;
}

}  // namespace

uint64_t FusedProjection::device_bytes() const {
  uint64_t total = 0;
  for (const Part& p : parts) total += p.tensor.device_bytes();
  return total;
}

std::vector<GpuTensor::Chunk> GpuTensor::chunks() const {
  std::vector<Chunk> out;
  for (uint64_t r = 0; r < rows; r += rows_per_chunk) {
    const uint64_t n = std::min(rows_per_chunk, rows - r);
    Chunk c{r, n, {}, {}};
    c.values = gpu::Binding(values, r * value_row_bytes, n * value_row_bytes);
    c.scales = scale_row_bytes ? gpu::Binding(scales, r * scale_row_bytes, (n * scale_row_bytes + 3) / 4 * 4)
                               : gpu::Binding(scales);
    out.push_back(c);
  }
  return out;
}

uint64_t GpuWeights::device_bytes() const {
  uint64_t total = token_embd.device_bytes() + output_norm.size() + (tied_output ? 0 : output.device_bytes()) +
                   rope_freqs.size();
  for (const auto& l : layers)
    total += l.attn_norm.size() + l.ffn_norm.size() + l.wqkv.device_bytes() + l.qkv_bias.size() + l.q_norm.size() +
             l.k_norm.size() + l.wo.device_bytes() + l.w13.device_bytes() + l.w2.device_bytes() +
             l.post_attn_norm.size() + l.post_ffn_norm.size();
  return total;
}

uint64_t weight_device_bytes(const GgufFile& file, const LlamaConfig& cfg) {
  auto bytes_of = [&](const std::string& name) -> uint64_t {
    const GgufTensorInfo& t = file.tensor(name);
    if (t.shape.size() == 1) return t.n_elements * sizeof(float);  // norms, biases: f32 buffers
    GpuWeight layout;  // row sizes only: no data is repacked
    layout.type = t.type;
    layout.cols = t.shape[0];
    return rows_of(t) * (layout.value_row_bytes() + layout.scale_row_bytes());
  };
  uint64_t total = bytes_of("token_embd.weight") + bytes_of("output_norm.weight");
  if (!cfg.tied_output) total += bytes_of("output.weight");
  if (cfg.rope_freqs || cfg.rope_linear_factor != 1.0f) total += cfg.rope_dim / 2 * sizeof(float);
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    for (const char* suffix : {"attn_norm.weight", "attn_output.weight", "ffn_norm.weight", "ffn_up.weight",
                               "ffn_down.weight"})
      total += bytes_of(layer_tensor(l, suffix));
    if (cfg.fused_qkv)
      total += bytes_of(layer_tensor(l, "attn_qkv.weight"));
    else
      for (const char* suffix : {"attn_q.weight", "attn_k.weight", "attn_v.weight"}) total += bytes_of(layer_tensor(l, suffix));
    if (!cfg.fused_gate_up) total += bytes_of(layer_tensor(l, "ffn_gate.weight"));
    if (cfg.qkv_bias)
      for (const char* suffix : {"attn_q.bias", "attn_k.bias", "attn_v.bias"}) total += bytes_of(layer_tensor(l, suffix));
    if (cfg.qk_norm)
      for (const char* suffix : {"attn_q_norm.weight", "attn_k_norm.weight"}) total += bytes_of(layer_tensor(l, suffix));
    if (cfg.post_norms)
      for (const char* suffix : {"post_attention_norm.weight", "post_ffw_norm.weight"})
        total += bytes_of(layer_tensor(l, suffix));
  }
  return total;
}

GpuWeights upload_weights(const gpu::Context& ctx, const GgufFile& file, const LlamaConfig& cfg, uint32_t n_ctx) {
  GpuWeights w;
  w.tied_output = cfg.tied_output;
  w.token_embd = upload_tensor(ctx, file, "token_embd.weight");
  w.output_norm = upload_floats(ctx, file, "output_norm.weight");
  if (!cfg.tied_output) w.output = upload_tensor(ctx, file, "output.weight");
  if (const std::vector<float> factors = rope_factors(file, cfg, n_ctx); !factors.empty()) {
    w.rope_freqs = gpu::Buffer(ctx, factors.size() * sizeof(float), gpu::MemoryUse::Device, "rope factors");
    w.rope_freqs.write_as<float>(factors);
  }
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    GpuLayer layer;
    layer.attn_norm = upload_floats(ctx, file, layer_tensor(l, "attn_norm.weight"));
    layer.ffn_norm = upload_floats(ctx, file, layer_tensor(l, "ffn_norm.weight"));
    layer.wqkv = cfg.fused_qkv ? upload_fused(ctx, file, {layer_tensor(l, "attn_qkv.weight")})
                               : upload_fused(ctx, file,
                                              {layer_tensor(l, "attn_q.weight"), layer_tensor(l, "attn_k.weight"),
                                               layer_tensor(l, "attn_v.weight")});
    if (cfg.qkv_bias)
      layer.qkv_bias = upload_concatenated_floats(
          ctx, file,
          {layer_tensor(l, "attn_q.bias"), layer_tensor(l, "attn_k.bias"), layer_tensor(l, "attn_v.bias")});
    if (cfg.qk_norm) {
      layer.q_norm = upload_floats(ctx, file, layer_tensor(l, "attn_q_norm.weight"));
      layer.k_norm = upload_floats(ctx, file, layer_tensor(l, "attn_k_norm.weight"));
    }
    layer.wo = upload_tensor(ctx, file, layer_tensor(l, "attn_output.weight"));
    layer.w13 = cfg.fused_gate_up  // phi3's ffn_up is gate | up already
                    ? upload_fused(ctx, file, {layer_tensor(l, "ffn_up.weight")})
                    : upload_fused(ctx, file, {layer_tensor(l, "ffn_gate.weight"), layer_tensor(l, "ffn_up.weight")});
    layer.w2 = upload_tensor(ctx, file, layer_tensor(l, "ffn_down.weight"));
    if (cfg.post_norms) {
      layer.post_attn_norm = upload_floats(ctx, file, layer_tensor(l, "post_attention_norm.weight"));
      layer.post_ffn_norm = upload_floats(ctx, file, layer_tensor(l, "post_ffw_norm.weight"));
    }
    w.layers.push_back(std::move(layer));
  }
  file.release_pages();
  return w;
}

}  // namespace kvscope
