// Repacking of GGUF weight blocks into the layout the shaders read (see
// shaders/common/params.h): quants and scales in separate arrays, value rows
// padded to 16-byte texels and scale rows to 4-byte words, so rows can be
// bound in chunks and read as whole texels / words.
#pragma once
#include <cstdint>
#include <vector>

#include "models/ggml_types.h"

namespace kvscope {

struct GpuWeight {
  GgmlType type = GgmlType::F32;
  uint64_t rows = 0, cols = 0;
  std::vector<uint32_t> values;  // binding W
  std::vector<uint32_t> scales;  // binding S (empty for F32/F16)
  uint64_t value_row_bytes() const;  // bytes of one row in `values`
  uint64_t scale_row_bytes() const;  // bytes of one row in `scales`
};

// `data` is rows x cols elements of `type` as stored in GGUF.
GpuWeight repack_for_gpu(GgmlType type, const uint8_t* data, uint64_t rows, uint64_t cols);

}  // namespace kvscope
