// The model's weights on the device, in the layout the shaders read
// (models/gpu_layout.h), each tensor cut into row chunks that fit one
// storage-buffer binding.
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
  gpu::Buffer values;  // binding W
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

struct GpuLayer {
  gpu::Buffer attn_norm, ffn_norm;  // f32 (dim)
  GpuTensor wq, wk, wv, wo, w1, w2, w3;
};

struct GpuWeights {
  GpuTensor token_embd;
  std::vector<GpuLayer> layers;
  gpu::Buffer output_norm;
  GpuTensor output;        // unused when tied: use token_embd
  bool tied_output = false;
  const GpuTensor& logits_weight() const { return tied_output ? token_embd : output; }
  uint64_t device_bytes() const;
};

// Uploads every tensor; throws gpu::OutOfMemory with the model's size when the
// device cannot hold it. Afterwards the file's pages are released
// (madvise DONTNEED): the model lives on the device, not twice in memory.
GpuWeights upload_weights(const gpu::Context& ctx, const GgufFile& file, const LlamaConfig& cfg);

}  // namespace kvscope
