#include "models/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>

#include "models/gpu_layout.h"

namespace kvscope {

namespace {

// Row chunks start at multiples of this many rows so that every chunk's
// binding offset is aligned for any device (offsets are multiples of 256 bytes)
// and its scales start on a whole uint.
constexpr uint64_t kChunkRowAlign = 256;

gpu::Buffer upload_floats(const gpu::Context& ctx, const GgufFile& file, const std::string& name) {
  const GgufTensorInfo& t = file.tensor(name);
  std::vector<float> v(t.n_elements);
  dequantize_row(t.type, {t.data, t.n_bytes}, v);
  gpu::Buffer b(ctx, v.size() * sizeof(float), gpu::MemoryUse::Device, name.c_str());
  b.write_as<float>(v);
  return b;
}

GpuTensor upload_tensor(const gpu::Context& ctx, const GgufFile& file, const std::string& name) {
  const GgufTensorInfo& t = file.tensor(name);
  GpuWeight w = repack_for_gpu(t.type, t.data, t.shape.size() > 1 ? t.shape[1] : 1, t.shape[0]);
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
  const uint64_t limit = ctx.max_binding_bytes();
  const uint64_t widest_row = std::max(g.value_row_bytes, g.scale_row_bytes);
  if (g.values.size() <= limit && g.scales.size() <= limit) {
    g.rows_per_chunk = g.rows;
  } else {
    g.rows_per_chunk = limit / widest_row / kChunkRowAlign * kChunkRowAlign;
    if (g.rows_per_chunk == 0)
      throw gpu::GpuError(fmt::format(
          "{}: one block of {} rows ({} bytes) does not fit a storage-buffer binding of {} bytes on "
          "{}; this device cannot run this model",
          name, kChunkRowAlign, kChunkRowAlign * widest_row, limit, ctx.info().name));
  }
  return g;
}

}  // namespace

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
  uint64_t total = token_embd.device_bytes() + output_norm.size() + (tied_output ? 0 : output.device_bytes());
  for (const auto& l : layers)
    total += l.attn_norm.size() + l.ffn_norm.size() + l.wq.device_bytes() + l.wk.device_bytes() +
             l.wv.device_bytes() + l.wo.device_bytes() + l.w1.device_bytes() + l.w2.device_bytes() +
             l.w3.device_bytes();
  return total;
}

GpuWeights upload_weights(const gpu::Context& ctx, const GgufFile& file, const LlamaConfig& cfg) {
  GpuWeights w;
  w.tied_output = cfg.tied_output;
  w.token_embd = upload_tensor(ctx, file, "token_embd.weight");
  w.output_norm = upload_floats(ctx, file, "output_norm.weight");
  if (!cfg.tied_output) w.output = upload_tensor(ctx, file, "output.weight");
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    GpuLayer layer;
    layer.attn_norm = upload_floats(ctx, file, layer_tensor(l, "attn_norm.weight"));
    layer.ffn_norm = upload_floats(ctx, file, layer_tensor(l, "ffn_norm.weight"));
    layer.wq = upload_tensor(ctx, file, layer_tensor(l, "attn_q.weight"));
    layer.wk = upload_tensor(ctx, file, layer_tensor(l, "attn_k.weight"));
    layer.wv = upload_tensor(ctx, file, layer_tensor(l, "attn_v.weight"));
    layer.wo = upload_tensor(ctx, file, layer_tensor(l, "attn_output.weight"));
    layer.w1 = upload_tensor(ctx, file, layer_tensor(l, "ffn_gate.weight"));
    layer.w2 = upload_tensor(ctx, file, layer_tensor(l, "ffn_down.weight"));
    layer.w3 = upload_tensor(ctx, file, layer_tensor(l, "ffn_up.weight"));
    w.layers.push_back(std::move(layer));
  }
  file.release_pages();
  return w;
}

}  // namespace kvscope
