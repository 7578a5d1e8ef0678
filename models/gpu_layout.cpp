// Repacking of GGUF rows into the GPU layout of shaders/common/params.h:
// block scales pulled out of the quant blocks into their own array; every value
// row starts on a 16-byte texel (the shaders read values as texels), every
// scale row on a 32-bit word. K-quant super-blocks keep ggml's byte order.
#include "models/gpu_layout.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "models/ggml_kquants.h"

namespace kvscope {

namespace {

constexpr uint64_t kBlock = 32;  // elements per Q8_0 / Q4_0 block
constexpr uint64_t kTexelBytes = 16;  // value rows are padded to whole texels
// Q6_K keeps ql, qh and its 16 int8 scales (208 bytes, 13 texels) per
// super-block in the values; its f16 d goes to the scales like Q8_0's.
constexpr uint64_t kQ6_KValueBytes = 208;

uint64_t words_for_bytes(uint64_t bytes) { return (bytes + 3) / 4; }

// Bytes of one row's quants/values before padding to a word.
uint64_t value_bytes_per_row(GgmlType type, uint64_t cols) {
  switch (type) {
    case GgmlType::F32:
      return cols * 4;
    case GgmlType::F16:
    case GgmlType::BF16:
      return cols * 2;
    case GgmlType::Q8_0:
      return cols;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::IQ4_NL:
      return cols / 2;
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
      return cols / kBlock * 20;  // qh (4 bytes) + qs (16) per block
    case GgmlType::Q4_K:
      return cols / kSuperBlock * kQ4_KBlockBytes;
    case GgmlType::Q5_K:
      return cols / kSuperBlock * kQ5_KBlockBytes;
    case GgmlType::Q6_K:
      return cols / kSuperBlock * kQ6_KValueBytes;
    case GgmlType::Q2_K:
      return cols / kSuperBlock * (kQ2_KBlockBytes - 4);  // d and dmin go to the scales
    case GgmlType::Q3_K:
      return cols / kSuperBlock * (kQ3_KBlockBytes - 2);  // d goes to the scales
    case GgmlType::IQ4_XS:
      return cols / kSuperBlock * (kIq4XsBlockBytes - 4);  // d and scales_h go to the scales
    default:
      break;
  }
  throw std::invalid_argument(fmt::format("repack_for_gpu: type {} is not supported on the GPU; supported: {}",
                                          type_traits(static_cast<uint32_t>(type)) ? type_traits(static_cast<uint32_t>(type))->name
                                                                                   : std::string_view("(unknown)"),
                                          supported_types_list()));
}

// Types whose block scale (and min) go to the scale array: one f16 per block,
// or for Q4_1/Q5_1 the pair {d, m} in one word per block.
bool has_scale_array(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::IQ4_NL:
    case GgmlType::Q6_K:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}
// Bytes of scale per block in the scale array: an f16 d, or a word
// (Q4_1/Q5_1 {d, m}; Q2_K {d, dmin}; IQ4_XS {d, scales_h}).
uint64_t scale_bytes_per_block(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q2_K:
    case GgmlType::IQ4_XS:
      return 4;
    default:
      return 2;
  }
}
// Where those bytes sit in ggml's block; the rest of the block keeps its order.
uint64_t scale_offset_in_block(GgmlType type) {
  switch (type) {
    case GgmlType::Q6_K: return kQ6_KValueBytes;
    case GgmlType::Q2_K: return kQ2_KBlockBytes - 4;
    case GgmlType::Q3_K: return kQ3_KBlockBytes - 2;
    default: return 0;
  }
}
uint64_t block_elems(GgmlType type) { return is_k_quant(type) ? kSuperBlock : kBlock; }

}  // namespace

uint64_t GpuWeight::value_row_bytes() const {
  return (value_bytes_per_row(type, cols) + kTexelBytes - 1) / kTexelBytes * kTexelBytes;
}

uint64_t GpuWeight::scale_row_bytes() const {
  if (!has_scale_array(type)) return 0;
  return 4 * words_for_bytes(scale_bytes_per_block(type) * (cols / block_elems(type)));
}

GpuWeight repack_for_gpu(GgmlType type, const uint8_t* data, uint64_t rows, uint64_t cols) {
  GpuWeight out;
  out.type = type;
  out.rows = rows;
  out.cols = cols;
  const uint64_t src_value_bytes = value_bytes_per_row(type, cols);  // throws for other types
  const bool blocked = has_scale_array(type) || is_k_quant(type);
  if (blocked && cols % block_elems(type) != 0) {
    throw std::invalid_argument(fmt::format(
        "repack_for_gpu: a {} tensor needs a row length that is a multiple of {}, got {}",
        type_traits(static_cast<uint32_t>(type))->name, block_elems(type), cols));
  }
  const uint64_t value_row_bytes = out.value_row_bytes();
  const uint64_t scale_row_bytes = out.scale_row_bytes();
  out.values.assign(rows * value_row_bytes / 4, 0u);  // zero padding
  out.scales.assign(rows * scale_row_bytes / 4, 0u);
  auto* values = reinterpret_cast<uint8_t*>(out.values.data());
  auto* scales = reinterpret_cast<uint8_t*>(out.scales.data());

  if (!has_scale_array(type)) {
    // F32/F16/BF16 rows, and Q4_K/Q5_K super-blocks (144 and 176 bytes: whole
    // texels, d/dmin/scales in the first), are copied as they are, then zero
    // padding to a whole texel.
    for (uint64_t r = 0; r < rows; ++r) {
      std::memcpy(values + r * value_row_bytes, data + r * src_value_bytes, src_value_bytes);
    }
    return out;
  }

  // The blocks' scales (f16 d; Q4_1/Q5_1: d then m, 4 bytes) move to
  // `scales`, the rest keeps its byte order in `values`:
  //   Q8_0 { f16 d; int8 q[32] }, Q4_0 / IQ4_NL { f16 d; qs[16] },
  //   Q4_1 { f16 d, m; qs[16] }, Q5_0 { f16 d; qh[4]; qs[16] },
  //   Q5_1 { f16 d, m; qh[4]; qs[16] }, Q6_K { ql[128]; qh[64]; i8 scales[16]; f16 d },
  //   Q2_K { scales[16]; qs[64]; f16 d, dmin }, Q3_K { hmask[32]; qs[64]; scales[12]; f16 d },
  //   IQ4_XS { f16 d; u16 scales_h; scales_l[4]; qs[128] }.
  const uint64_t block_bytes = type_traits(static_cast<uint32_t>(type))->block_bytes;
  const uint64_t d_bytes = scale_bytes_per_block(type);
  const uint64_t quant_bytes = block_bytes - d_bytes;
  const uint64_t d_offset = scale_offset_in_block(type);
  const uint64_t quant_offset = d_offset == 0 ? d_bytes : 0;
  const uint64_t blocks_per_row = cols / block_elems(type);
  for (uint64_t r = 0; r < rows; ++r) {
    const uint8_t* src_row = data + r * blocks_per_row * block_bytes;
    uint8_t* value_row = values + r * value_row_bytes;
    uint8_t* scale_row = scales + r * scale_row_bytes;
    for (uint64_t b = 0; b < blocks_per_row; ++b) {
      const uint8_t* block = src_row + b * block_bytes;
      std::memcpy(scale_row + d_bytes * b, block + d_offset, d_bytes);
      std::memcpy(value_row + b * quant_bytes, block + quant_offset, quant_bytes);
    }
  }
  return out;
}

}  // namespace kvscope
