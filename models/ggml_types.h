// Tensor element types as GGUF numbers them, f16 conversion, and the CPU
// reference for the block formats (the shaders dequantize the same layouts).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace kvscope {

// GGUF / ggml type ids (the numbers are the file format's).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
};

struct TypeTraits {
  std::string_view name;   // "F32", "Q8_0", ...
  uint32_t block_elems;    // elements per block (1 for plain types)
  uint32_t block_bytes;    // bytes per block
};

// Traits of a type this build knows the size of; nullopt for unknown ids.
std::optional<TypeTraits> type_traits(uint32_t type_id);
// Whether kvscope can compute with this type (read it and run it on the GPU).
bool type_supported(GgmlType t);
std::string_view supported_types_list();  // "F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS"
// Whether quantize_row writes it (every supported type but IQ4_NL and
// IQ4_XS, whose non-uniform level searches kvscope does not do: it reads them).
bool type_writable(GgmlType t);
// K-quants: super-blocks of 256 elements (layouts in models/ggml_kquants.h).
// (Q2_K, Q3_K and IQ4_XS too: their blocks are 256 elements.)
constexpr bool is_k_quant(GgmlType t) {
  return t == GgmlType::Q4_K || t == GgmlType::Q5_K || t == GgmlType::Q6_K || t == GgmlType::Q2_K ||
         t == GgmlType::Q3_K || t == GgmlType::IQ4_XS;
}
std::optional<GgmlType> type_from_name(std::string_view name);  // case-insensitive

// Bytes of a row of n elements; n must be a multiple of block_elems.
size_t row_bytes(GgmlType t, size_t n);

// IEEE half <-> float, round to nearest even, inf/NaN preserved.
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
// bfloat16 (the top half of an f32): round to nearest even as ggml does, NaN kept quiet.
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);

// Q8_0: blocks of 32 -> { f16 d; int8 q[32]; }  x = d * q, d = amax / 127.
// Q4_0: blocks of 32 -> { f16 d; uint8 qs[16]; } x = d * (q - 8),
//   d = max / -8 where max is the signed value of largest magnitude;
//   qs[j] holds element j in the low nibble and element j+16 in the high one.
// Both match ggml's reference quantizers bit for bit, as does BF16.
// Q4_K Q5_K Q6_K: see models/ggml_kquants.h (dequantization exact to ggml's
// formulas; quantization is kvscope's own scale search).
// Q4_1: { f16 d; f16 m; uint8 qs[16]; }  x = d * q + m, q in 0..15 (nibbles as Q4_0),
//   d = (max - min) / 15, m = min.
// Q5_0: { f16 d; uint32 qh; uint8 qs[16]; }  x = d * (q - 16), q in 0..31: the
//   low four bits as Q4_0's nibbles, the fifth of element j in bit j of qh
//   (little-endian); d = max / -16 (max: the signed value of largest magnitude).
// Q5_1: { f16 d; f16 m; uint32 qh; uint8 qs[16]; }  x = d * q + m, d = (max - min) / 31.
// IQ4_NL: { f16 d; uint8 qs[16]; }  x = d * kIq4NlValues[q], q a nibble as Q4_0's
//   (read only: kvscope does not write it).
// IQ4_XS: 256 elements { f16 d; uint16 scales_h; uint8 scales_l[4]; uint8 qs[128]; }:
//   eight sub-blocks of 32 as IQ4_NL's, each with a 6-bit scale ls (low nibble
//   of scales_l[i/2], high two bits from bits 2i..2i+1 of scales_h);
//   x = d * (ls - 32) * kIq4NlValues[q] (read only). Q2_K, Q3_K: models/ggml_kquants.h.
// These follow ggml's reference (de)quantizers (ggml-quants.c, *_ref) bit for bit.
constexpr size_t kQ8_0BlockBytes = 34;
constexpr size_t kQ4_0BlockBytes = 18;
constexpr size_t kQ4_1BlockBytes = 20;
constexpr size_t kQ5_0BlockBytes = 22;
constexpr size_t kQ5_1BlockBytes = 24;
constexpr size_t kIq4NlBlockBytes = 18;
constexpr size_t kIq4XsBlockBytes = 136;
// IQ4_NL's 16 levels, ggml's kvalues_iq4nl.
constexpr int8_t kIq4NlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
void quantize_row(GgmlType t, std::span<const float> src, std::span<uint8_t> dst);
void dequantize_row(GgmlType t, std::span<const uint8_t> src, std::span<float> dst);

}  // namespace kvscope
