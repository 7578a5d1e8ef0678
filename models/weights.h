// The model's weights on the device, in the layout the shaders read
// (models/gpu_layout.h), each tensor cut into row chunks whose values fit one
// texel-buffer binding and whose scales fit one storage-buffer binding.
#pragma once
#include <cstdint>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "models/ggml_types.h"
#include "models/gguf.h"
#include "models/hparams.h"

namespace kvscope {

struct GpuTensor {
  GgmlType type = GgmlType::F32;
  uint64_t rows = 0, cols = 0;
  gpu::Buffer values;  // binding W (a uniform texel buffer)
  gpu::Buffer scales;  // binding S (a small placeholder for F32/F16)
  uint64_t value_row_bytes = 0, scale_row_bytes = 0;
  uint64_t rows_per_chunk = 0;  // rows one binding may hold (multiple of 256 or all rows)

  struct Chunk {
    uint64_t first_row, rows;
    gpu::Binding values, scales;
  };
  std::vector<Chunk> chunks() const;
  uint64_t device_bytes() const { return values.size() + scales.size(); }
};

// Projections of the same input whose outputs share one activation row, each
// part at its column offset: wq|wk|wv -> a qkv row, w1|w3 -> a gate|up row.
// Parts of one type are uploaded as one concatenated tensor (rows are
// independent), so the projection is one dispatch instead of two or three.
struct FusedProjection {
  struct Part {
    GpuTensor tensor;
    uint64_t out_offset = 0;  // first output column of this part in the row
  };
  std::vector<Part> parts;
  uint64_t out_width = 0;  // sum of the parts' rows
  uint64_t device_bytes() const;
};

struct GpuLayer {
  gpu::Buffer attn_norm, ffn_norm;  // f32 (dim)
  FusedProjection wqkv;  // rows: q (n_head * head_dim) | k | v (n_kv_head * head_dim each); cols dim
  gpu::Buffer qkv_bias;  // f32 (q_dim + 2 kv_dim): q | k | v biases, added to the wqkv row (qwen2); empty without
  gpu::Buffer q_norm, k_norm;  // f32 (head_dim): per-head RMS norm weights of q and k (qwen3); empty without
  GpuTensor wo;          // (dim, q_dim)
  FusedProjection w13;   // rows: gate (ffn_dim) | up (ffn_dim); cols dim
  GpuTensor w2;          // (dim, ffn_dim)
  gpu::Buffer post_attn_norm, post_ffn_norm;  // f32 (dim): norms of the attention and FFN outputs (gemma3); empty without
};

struct GpuWeights {
  GpuTensor token_embd;
  std::vector<GpuLayer> layers;
  gpu::Buffer output_norm;
  GpuTensor output;        // unused when tied: use token_embd
  gpu::Buffer rope_freqs;  // f32 (rope_dim/2) frequency divisors of global layers (rope_factors()); empty without
  bool tied_output = false;
  const GpuTensor& logits_weight() const { return tied_output ? token_embd : output; }
  uint64_t device_bytes() const;
};

// Device bytes the weights of `file` will take once uploaded (repacked rows,
// f32 norms and biases), computed from the tensor shapes alone.
uint64_t weight_device_bytes(const GgufFile& file, const LlamaConfig& cfg);

// Uploads every tensor; throws gpu::OutOfMemory with the model's size when the
// device cannot hold it. Afterwards the file's pages are released
// (madvise DONTNEED): the model lives on the device, not twice in memory.
// `n_ctx`: the context the model runs at (Phi-3.5 picks its RoPE factors by it).
GpuWeights upload_weights(const gpu::Context& ctx, const GgufFile& file, const LlamaConfig& cfg, uint32_t n_ctx);

}  // namespace kvscope
