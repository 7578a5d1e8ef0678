// Repacking of GGUF rows into the GPU layout of shaders/common/params.h:
// block scales pulled out of the quant blocks into their own array; every value
// row starts on a 16-byte texel (the shaders read values as texels), every
// scale row on a 32-bit word.
#include "models/gpu_layout.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace kvscope {

namespace {

constexpr uint64_t kBlock = 32;  // elements per Q8_0 / Q4_0 block
constexpr uint64_t kTexelBytes = 16;  // value rows are padded to whole texels

uint64_t words_for_bytes(uint64_t bytes) { return (bytes + 3) / 4; }

// Bytes of one row's quants/values before padding to a word.
uint64_t value_bytes_per_row(GgmlType type, uint64_t cols) {
  switch (type) {
    case GgmlType::F32:
      return cols * 4;
    case GgmlType::F16:
      return cols * 2;
    case GgmlType::Q8_0:
      return cols;
    case GgmlType::Q4_0:
      return cols / 2;
    default:
      break;
  }
  throw std::invalid_argument("repack_for_gpu: type id " + std::to_string(static_cast<uint32_t>(type)) +
                              " is not supported on the GPU; supported: F32 F16 Q8_0 Q4_0");
}

bool is_quantized(GgmlType type) { return type == GgmlType::Q8_0 || type == GgmlType::Q4_0; }

}  // namespace

uint64_t GpuWeight::value_row_bytes() const {
  return (value_bytes_per_row(type, cols) + kTexelBytes - 1) / kTexelBytes * kTexelBytes;
}

uint64_t GpuWeight::scale_row_bytes() const {
  if (!is_quantized(type)) return 0;
  return 4 * words_for_bytes(2 * (cols / kBlock));  // one f16 per block
}

GpuWeight repack_for_gpu(GgmlType type, const uint8_t* data, uint64_t rows, uint64_t cols) {
  GpuWeight out;
  out.type = type;
  out.rows = rows;
  out.cols = cols;
  const uint64_t src_value_bytes = value_bytes_per_row(type, cols);  // throws for other types
  if (is_quantized(type) && cols % kBlock != 0) {
    throw std::invalid_argument("repack_for_gpu: a " + std::string(type == GgmlType::Q8_0 ? "Q8_0" : "Q4_0") +
                                " tensor needs a row length that is a multiple of 32, got " +
                                std::to_string(cols));
  }
  const uint64_t value_row_bytes = out.value_row_bytes();
  const uint64_t scale_row_bytes = out.scale_row_bytes();
  out.values.assign(rows * value_row_bytes / 4, 0u);  // zero padding
  out.scales.assign(rows * scale_row_bytes / 4, 0u);
  auto* values = reinterpret_cast<uint8_t*>(out.values.data());
  auto* scales = reinterpret_cast<uint8_t*>(out.scales.data());

  if (!is_quantized(type)) {
    // F32/F16 rows are copied as they are, then zero padding to a whole texel.
    for (uint64_t r = 0; r < rows; ++r) {
      std::memcpy(values + r * value_row_bytes, data + r * src_value_bytes, src_value_bytes);
    }
    return out;
  }

  // ggml blocks: { f16 d; q[...] } with q of 32 int8 (Q8_0) or 16 bytes of
  // nibble pairs (Q4_0). The quant bytes keep their order; d moves to `scales`.
  const uint64_t block_bytes = type == GgmlType::Q8_0 ? kQ8_0BlockBytes : kQ4_0BlockBytes;
  const uint64_t quant_bytes = block_bytes - 2;
  const uint64_t blocks_per_row = cols / kBlock;
  for (uint64_t r = 0; r < rows; ++r) {
    const uint8_t* src_row = data + r * blocks_per_row * block_bytes;
    uint8_t* value_row = values + r * value_row_bytes;
    uint8_t* scale_row = scales + r * scale_row_bytes;
    for (uint64_t b = 0; b < blocks_per_row; ++b) {
      const uint8_t* block = src_row + b * block_bytes;
      std::memcpy(scale_row + 2 * b, block, 2);
      std::memcpy(value_row + b * quant_bytes, block + 2, quant_bytes);
    }
  }
  return out;
}

}  // namespace kvscope
