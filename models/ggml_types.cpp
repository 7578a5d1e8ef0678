// ggml tensor types: sizes of every type a GGUF file may name, IEEE half
// conversion, and the reference quantizers for the block formats kvscope
// computes with. The quantizers follow ggml's quantize_row_*_ref formulas
// step for step (same float operations in the same order) so that a file we
// quantize is byte-identical to one llama.cpp would write.
#include "models/ggml_types.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "models/ggml_kquants.h"

namespace kvscope {

namespace {

struct TypeRow {
  GgmlType type;
  TypeTraits traits;
};

// Block sizes as ggml defines them (ggml.c type_traits).
constexpr std::array kTypes = {
    TypeRow{GgmlType::F32, {"F32", 1, 4}},
    TypeRow{GgmlType::F16, {"F16", 1, 2}},
    TypeRow{GgmlType::Q4_0, {"Q4_0", 32, 18}},
    TypeRow{GgmlType::Q4_1, {"Q4_1", 32, 20}},
    TypeRow{GgmlType::Q5_0, {"Q5_0", 32, 22}},
    TypeRow{GgmlType::Q5_1, {"Q5_1", 32, 24}},
    TypeRow{GgmlType::Q8_0, {"Q8_0", 32, 34}},
    TypeRow{GgmlType::Q8_1, {"Q8_1", 32, 36}},
    TypeRow{GgmlType::Q2_K, {"Q2_K", 256, 84}},
    TypeRow{GgmlType::Q3_K, {"Q3_K", 256, 110}},
    TypeRow{GgmlType::Q4_K, {"Q4_K", 256, 144}},
    TypeRow{GgmlType::Q5_K, {"Q5_K", 256, 176}},
    TypeRow{GgmlType::Q6_K, {"Q6_K", 256, 210}},
    TypeRow{GgmlType::Q8_K, {"Q8_K", 256, 292}},
    TypeRow{GgmlType::IQ2_XXS, {"IQ2_XXS", 256, 66}},
    TypeRow{GgmlType::IQ2_XS, {"IQ2_XS", 256, 74}},
    TypeRow{GgmlType::IQ3_XXS, {"IQ3_XXS", 256, 98}},
    TypeRow{GgmlType::IQ1_S, {"IQ1_S", 256, 50}},
    TypeRow{GgmlType::IQ4_NL, {"IQ4_NL", 32, 18}},
    TypeRow{GgmlType::IQ3_S, {"IQ3_S", 256, 110}},
    TypeRow{GgmlType::IQ2_S, {"IQ2_S", 256, 82}},
    TypeRow{GgmlType::IQ4_XS, {"IQ4_XS", 256, 136}},
    TypeRow{GgmlType::IQ1_M, {"IQ1_M", 256, 56}},
    TypeRow{GgmlType::I8, {"I8", 1, 1}},
    TypeRow{GgmlType::I16, {"I16", 1, 2}},
    TypeRow{GgmlType::I32, {"I32", 1, 4}},
    TypeRow{GgmlType::I64, {"I64", 1, 8}},
    TypeRow{GgmlType::F64, {"F64", 1, 8}},
    TypeRow{GgmlType::BF16, {"BF16", 1, 2}},
};

constexpr size_t kBlock = 32;  // elements per Q8_0 / Q4_0 block

TypeTraits traits_of(GgmlType t) {
  auto traits = type_traits(static_cast<uint32_t>(t));
  if (!traits) throw std::invalid_argument(fmt::format("unknown ggml type id {}", static_cast<uint32_t>(t)));
  return *traits;
}

void store_f16(uint8_t* dst, float value) {
  const uint16_t h = f32_to_f16(value);
  std::memcpy(dst, &h, sizeof h);  // GGUF is little-endian, as is every host we run on
}

float load_f16(const uint8_t* src) {
  uint16_t h;
  std::memcpy(&h, src, sizeof h);
  return f16_to_f32(h);
}

// ggml casts these float values straight to integers; inputs holding inf or
// NaN would make that undefined behaviour, so clamp first. For finite inputs
// the clamps never bind and the results equal ggml's.
int8_t round_to_q8(float x) {
  float r = std::round(x);
  if (!(r >= -127.0f)) r = std::isnan(r) ? 0.0f : -127.0f;
  if (r > 127.0f) r = 127.0f;
  return static_cast<int8_t>(r);
}

uint8_t truncate_to_q4(float biased) {  // biased = x * id + 8.5f
  if (!(biased >= 0.0f)) return 0;  // also NaN
  if (biased >= 15.0f) return 15;
  return static_cast<uint8_t>(biased);
}

void quantize_q8_0(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kBlock; ++block) {
    const float* x = src.data() + block * kBlock;
    uint8_t* out = dst + block * kQ8_0BlockBytes;
    float amax = 0.0f;
    for (size_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / ((1 << 7) - 1);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(out, d);
    for (size_t j = 0; j < kBlock; ++j) {
      const int8_t q = round_to_q8(x[j] * id);
      std::memcpy(out + 2 + j, &q, 1);
    }
  }
}

void dequantize_q8_0(const uint8_t* src, std::span<float> dst) {
  for (size_t block = 0; block < dst.size() / kBlock; ++block) {
    const uint8_t* in = src + block * kQ8_0BlockBytes;
    const float d = load_f16(in);
    for (size_t j = 0; j < kBlock; ++j) {
      int8_t q;
      std::memcpy(&q, in + 2 + j, 1);
      dst[block * kBlock + j] = static_cast<float>(q) * d;
    }
  }
}

void quantize_q4_0(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kBlock; ++block) {
    const float* x = src.data() + block * kBlock;
    uint8_t* out = dst + block * kQ4_0BlockBytes;
    // The scale keeps the sign of the element of largest magnitude, so that
    // element maps exactly to -8 (the end of the range with one more step).
    float amax = 0.0f, max = 0.0f;
    for (size_t j = 0; j < kBlock; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(out, d);
    for (size_t j = 0; j < kBlock / 2; ++j) {
      const uint8_t low = truncate_to_q4(x[j] * id + 8.5f);
      const uint8_t high = truncate_to_q4(x[j + kBlock / 2] * id + 8.5f);
      out[2 + j] = static_cast<uint8_t>(low | (high << 4));
    }
  }
}

void dequantize_q4_0(const uint8_t* src, std::span<float> dst) {
  for (size_t block = 0; block < dst.size() / kBlock; ++block) {
    const uint8_t* in = src + block * kQ4_0BlockBytes;
    const float d = load_f16(in);
    float* y = dst.data() + block * kBlock;
    for (size_t j = 0; j < kBlock / 2; ++j) {
      y[j] = static_cast<float>((in[2 + j] & 0x0F) - 8) * d;
      y[j + kBlock / 2] = static_cast<float>((in[2 + j] >> 4) - 8) * d;
    }
  }
}

// Q4_1 / Q5_1: the block's min is m, its range split into 15 / 31 steps;
// codes round half up from the min (ggml: (x - min) * id + 0.5, truncated).
void quantize_q4_1(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kBlock; ++block) {
    const float* x = src.data() + block * kBlock;
    uint8_t* out = dst + block * kQ4_1BlockBytes;
    float min = FLT_MAX, max = -FLT_MAX;
    for (size_t j = 0; j < kBlock; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(out, d);
    store_f16(out + 2, min);
    for (size_t j = 0; j < kBlock / 2; ++j) {
      const uint8_t low = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - min) * id + 0.5f))));
      const uint8_t high = static_cast<uint8_t>(
          std::min(15, static_cast<int>(static_cast<int8_t>((x[j + kBlock / 2] - min) * id + 0.5f))));
      out[4 + j] = static_cast<uint8_t>(low | (high << 4));
    }
  }
}

void dequantize_q4_1(const uint8_t* src, std::span<float> dst) {
  for (size_t block = 0; block < dst.size() / kBlock; ++block) {
    const uint8_t* in = src + block * kQ4_1BlockBytes;
    const float d = load_f16(in), m = load_f16(in + 2);
    float* y = dst.data() + block * kBlock;
    for (size_t j = 0; j < kBlock / 2; ++j) {
      y[j] = static_cast<float>(in[4 + j] & 0x0F) * d + m;
      y[j + kBlock / 2] = static_cast<float>(in[4 + j] >> 4) * d + m;
    }
  }
}

// Q5_0: as Q4_0 with a fifth bit per element in qh; d maps the element of
// largest magnitude to -16.
void quantize_q5_0(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kBlock; ++block) {
    const float* x = src.data() + block * kBlock;
    uint8_t* out = dst + block * kQ5_0BlockBytes;
    float amax = 0.0f, max = 0.0f;
    for (size_t j = 0; j < kBlock; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(out, d);
    uint32_t qh = 0;
    for (size_t j = 0; j < kBlock / 2; ++j) {
      const uint8_t q0 = static_cast<uint8_t>(std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f))));
      const uint8_t q1 =
          static_cast<uint8_t>(std::min(31, static_cast<int>(static_cast<int8_t>(x[j + kBlock / 2] * id + 16.5f))));
      out[6 + j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= uint32_t((q0 & 0x10u) >> 4) << j;
      qh |= uint32_t((q1 & 0x10u) >> 4) << (j + kBlock / 2);
    }
    std::memcpy(out + 2, &qh, 4);  // little-endian, as ggml writes it
  }
}

void dequantize_q5_0(const uint8_t* src, std::span<float> dst) {
  for (size_t block = 0; block < dst.size() / kBlock; ++block) {
    const uint8_t* in = src + block * kQ5_0BlockBytes;
    const float d = load_f16(in);
    uint32_t qh;
    std::memcpy(&qh, in + 2, 4);
    float* y = dst.data() + block * kBlock;
    for (size_t j = 0; j < kBlock / 2; ++j) {
      const int q0 = (in[6 + j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int q1 = (in[6 + j] >> 4) | static_cast<int>(((qh >> (j + kBlock / 2)) & 1u) << 4);
      y[j] = static_cast<float>(q0 - 16) * d;
      y[j + kBlock / 2] = static_cast<float>(q1 - 16) * d;
    }
  }
}

void quantize_q5_1(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kBlock; ++block) {
    const float* x = src.data() + block * kBlock;
    uint8_t* out = dst + block * kQ5_1BlockBytes;
    float min = FLT_MAX, max = -FLT_MAX;
    for (size_t j = 0; j < kBlock; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(out, d);
    store_f16(out + 2, min);
    uint32_t qh = 0;
    for (size_t j = 0; j < kBlock / 2; ++j) {
      const uint8_t q0 = static_cast<uint8_t>(static_cast<int>((x[j] - min) * id + 0.5f));
      const uint8_t q1 = static_cast<uint8_t>(static_cast<int>((x[j + kBlock / 2] - min) * id + 0.5f));
      out[8 + j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= uint32_t((q0 & 0x10u) >> 4) << j;
      qh |= uint32_t((q1 & 0x10u) >> 4) << (j + kBlock / 2);
    }
    std::memcpy(out + 4, &qh, 4);
  }
}

void dequantize_q5_1(const uint8_t* src, std::span<float> dst) {
  for (size_t block = 0; block < dst.size() / kBlock; ++block) {
    const uint8_t* in = src + block * kQ5_1BlockBytes;
    const float d = load_f16(in), m = load_f16(in + 2);
    uint32_t qh;
    std::memcpy(&qh, in + 4, 4);
    float* y = dst.data() + block * kBlock;
    for (size_t j = 0; j < kBlock / 2; ++j) {
      const int q0 = (in[8 + j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int q1 = (in[8 + j] >> 4) | static_cast<int>(((qh >> (j + kBlock / 2)) & 1u) << 4);
      y[j] = static_cast<float>(q0) * d + m;
      y[j + kBlock / 2] = static_cast<float>(q1) * d + m;
    }
  }
}

void dequantize_iq4_nl(const uint8_t* src, std::span<float> dst) {
  for (size_t block = 0; block < dst.size() / kBlock; ++block) {
    const uint8_t* in = src + block * kIq4NlBlockBytes;
    const float d = load_f16(in);
    float* y = dst.data() + block * kBlock;
    for (size_t j = 0; j < kBlock / 2; ++j) {
      y[j] = d * static_cast<float>(kIq4NlValues[in[2 + j] & 0x0F]);
      y[j + kBlock / 2] = d * static_cast<float>(kIq4NlValues[in[2 + j] >> 4]);
    }
  }
}

void dequantize_iq4_xs(const uint8_t* src, std::span<float> dst) {
  constexpr size_t kSuper = 256;
  for (size_t block = 0; block < dst.size() / kSuper; ++block) {
    const uint8_t* in = src + block * kIq4XsBlockBytes;
    const float d = load_f16(in);
    uint16_t scales_h;
    std::memcpy(&scales_h, in + 2, 2);
    const uint8_t* scales_l = in + 4;
    const uint8_t* qs = in + 8;
    float* y = dst.data() + block * kSuper;
    for (size_t ib = 0; ib < kSuper / 32; ++ib) {
      const int ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4);
      const float dl = d * static_cast<float>(ls - 32);
      for (size_t j = 0; j < 16; ++j) {
        y[32 * ib + j] = dl * static_cast<float>(kIq4NlValues[qs[16 * ib + j] & 0x0F]);
        y[32 * ib + j + 16] = dl * static_cast<float>(kIq4NlValues[qs[16 * ib + j] >> 4]);
      }
    }
  }
}

}  // namespace

std::optional<TypeTraits> type_traits(uint32_t type_id) {
  for (const TypeRow& row : kTypes)
    if (static_cast<uint32_t>(row.type) == type_id) return row.traits;
  return std::nullopt;
}

bool type_supported(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::IQ4_NL:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

bool type_writable(GgmlType t) {
  return type_supported(t) && t != GgmlType::IQ4_NL && t != GgmlType::IQ4_XS;
}

std::string_view supported_types_list() {
  return "F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS";
}

uint16_t f32_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 64u);  // NaN stays quiet NaN
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);  // round to nearest even
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

std::optional<GgmlType> type_from_name(std::string_view name) {
  for (const TypeRow& row : kTypes) {
    const std::string_view known = row.traits.name;
    if (known.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i)
      same = std::toupper(static_cast<unsigned char>(name[i])) == static_cast<unsigned char>(known[i]);
    if (same) return row.type;
  }
  return std::nullopt;
}

size_t row_bytes(GgmlType t, size_t n) {
  const TypeTraits traits = traits_of(t);
  if (n % traits.block_elems != 0)
    throw std::invalid_argument(fmt::format("a {} row of {} elements is not a whole number of {}-element blocks; "
                                            "{} needs row lengths that are multiples of {}",
                                            traits.name, n, traits.block_elems, traits.name, traits.block_elems));
  return n / traits.block_elems * traits.block_bytes;
}

uint16_t f32_to_f16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7FFFFFFFu;

  if (abs > 0x7F800000u)  // NaN: keep it quiet and keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  if (abs >= 0x38800000u) {  // |f| >= 2^-14: normal half (or overflow to inf)
    // Re-bias the exponent (127 -> 15), then round the 13 dropped mantissa
    // bits to nearest even; a carry may ripple into the exponent, as it should.
    const uint32_t rebiased = abs - (112u << 23);
    const uint32_t rounded = (rebiased + 0xFFFu + ((rebiased >> 13) & 1u)) >> 13;
    if (rounded >= 0x7C00u) return static_cast<uint16_t>(sign | 0x7C00u);  // also inf itself
    return static_cast<uint16_t>(sign | rounded);
  }
  // Subnormal half: count units of 2^-24, rounding to nearest even.
  const uint32_t exponent = abs >> 23;
  const uint32_t shift = 126 - exponent;  // >= 14 here
  if (shift > 24) return sign;            // below 2^-25 (or a float subnormal): rounds to zero
  const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
  uint32_t units = mantissa >> shift;
  const uint32_t rest = mantissa & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (units & 1u))) ++units;  // may become the smallest normal: correct
  return static_cast<uint16_t>(sign | units);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

void quantize_row(GgmlType t, std::span<const float> src, std::span<uint8_t> dst) {
  const size_t expected = row_bytes(t, src.size());
  if (dst.size() != expected)
    throw std::invalid_argument(fmt::format("quantize_row: {} elements of {} need {} bytes, got {}", src.size(),
                                            traits_of(t).name, expected, dst.size()));
  switch (t) {
    case GgmlType::F32:
      if (!src.empty()) std::memcpy(dst.data(), src.data(), expected);
      return;
    case GgmlType::F16:
      for (size_t i = 0; i < src.size(); ++i) store_f16(dst.data() + 2 * i, src[i]);
      return;
    case GgmlType::BF16:
      for (size_t i = 0; i < src.size(); ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst.data() + 2 * i, &h, sizeof h);
      }
      return;
    case GgmlType::Q8_0: quantize_q8_0(src, dst.data()); return;
    case GgmlType::Q4_0: quantize_q4_0(src, dst.data()); return;
    case GgmlType::Q4_1: quantize_q4_1(src, dst.data()); return;
    case GgmlType::Q5_0: quantize_q5_0(src, dst.data()); return;
    case GgmlType::Q5_1: quantize_q5_1(src, dst.data()); return;
    case GgmlType::Q4_K: quantize_q4_k(src, dst.data()); return;
    case GgmlType::Q5_K: quantize_q5_k(src, dst.data()); return;
    case GgmlType::Q6_K: quantize_q6_k(src, dst.data()); return;
    case GgmlType::Q2_K: quantize_q2_k(src, dst.data()); return;
    case GgmlType::Q3_K: quantize_q3_k(src, dst.data()); return;
    default:
      throw std::invalid_argument(fmt::format("quantize_row: kvscope cannot write type {}; it writes: {}",
                                              traits_of(t).name,
                                              "F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K"));
  }
}

void dequantize_row(GgmlType t, std::span<const uint8_t> src, std::span<float> dst) {
  const size_t expected = row_bytes(t, dst.size());
  if (src.size() != expected)
    throw std::invalid_argument(fmt::format("dequantize_row: {} elements of {} need {} bytes, got {}", dst.size(),
                                            traits_of(t).name, expected, src.size()));
  switch (t) {
    case GgmlType::F32:
      if (!dst.empty()) std::memcpy(dst.data(), src.data(), expected);
      return;
    case GgmlType::F16:
      for (size_t i = 0; i < dst.size(); ++i) dst[i] = load_f16(src.data() + 2 * i);
      return;
    case GgmlType::BF16:
      for (size_t i = 0; i < dst.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, src.data() + 2 * i, sizeof h);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case GgmlType::Q8_0: dequantize_q8_0(src.data(), dst); return;
    case GgmlType::Q4_0: dequantize_q4_0(src.data(), dst); return;
    case GgmlType::Q4_1: dequantize_q4_1(src.data(), dst); return;
    case GgmlType::Q5_0: dequantize_q5_0(src.data(), dst); return;
    case GgmlType::Q5_1: dequantize_q5_1(src.data(), dst); return;
    case GgmlType::IQ4_NL: dequantize_iq4_nl(src.data(), dst); return;
    case GgmlType::IQ4_XS: dequantize_iq4_xs(src.data(), dst); return;
    case GgmlType::Q2_K: dequantize_q2_k(src.data(), dst); return;
    case GgmlType::Q3_K: dequantize_q3_k(src.data(), dst); return;
    case GgmlType::Q4_K: dequantize_q4_k(src.data(), dst); return;
    case GgmlType::Q5_K: dequantize_q5_k(src.data(), dst); return;
    case GgmlType::Q6_K: dequantize_q6_k(src.data(), dst); return;
    default:
      throw std::invalid_argument(fmt::format("dequantize_row: kvscope cannot read type {}; supported: {}",
                                              traits_of(t).name, supported_types_list()));
  }
}

}  // namespace kvscope
