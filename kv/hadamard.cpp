#include "kv/hadamard.h"

#include <bit>
#include <stdexcept>

namespace kvscope::kv {

HadamardShape hadamard_shape(uint32_t head_dim) {
  if (head_dim == 0) throw std::invalid_argument("hadamard: head_dim must be > 0");
  const uint32_t pow2 = head_dim & (~head_dim + 1u);  // the lowest set bit
  return {pow2, head_dim / pow2};
}

float hadamard_sign(uint32_t d) {
  uint32_t h = (d + 1u) * 0x9E3779B1u;
  h ^= h >> 15;
  h *= 0x2C1B3C6Du;
  h ^= h >> 12;
  return (h & 1u) != 0u ? -1.0f : 1.0f;
}

float hadamard_reflection(uint32_t odd) {
  // f32(2/M), spelled as bits so that hadamard.glsl holds the very same constants.
  switch (odd) {
    case 3: return std::bit_cast<float>(0x3f2aaaabu);
    case 5: return std::bit_cast<float>(0x3ecccccdu);
    case 7: return std::bit_cast<float>(0x3e924925u);
    case 9: return std::bit_cast<float>(0x3e638e39u);
    case 11: return std::bit_cast<float>(0x3e3a2e8cu);
    case 13: return std::bit_cast<float>(0x3e1d89d9u);
    case 15: return std::bit_cast<float>(0x3e088889u);
    default: return 0.0f;
  }
}

namespace {

void walsh_hadamard_blocks(std::span<float> x, uint32_t pow2) {
  for (uint32_t h = 1; h < pow2; h *= 2)
    for (size_t block = 0; block < x.size(); block += pow2)
      for (uint32_t j = 0; j < pow2; j += 2 * h)
        for (uint32_t k = j; k < j + h; ++k) {
          const float a = x[block + k], b = x[block + k + h];
          x[block + k] = a + b;
          x[block + k + h] = a - b;
        }
}

void reflect(std::span<float> x, const HadamardShape& s) {
  const float c = hadamard_reflection(s.odd);
  if (c == 0.0f) return;
  for (uint32_t j = 0; j < s.pow2; ++j) {
    float sum = 0.0f;
    for (uint32_t i = 0; i < s.odd; ++i) sum += x[size_t{i} * s.pow2 + j];
    // A separate product and difference (volatile keeps a compiler from fusing them).
    volatile float t = c * sum;
    for (uint32_t i = 0; i < s.odd; ++i) x[size_t{i} * s.pow2 + j] = x[size_t{i} * s.pow2 + j] - t;
  }
}

}  // namespace

void hadamard_mix(std::span<float> x) {
  const HadamardShape s = hadamard_shape(uint32_t(x.size()));
  for (size_t d = 0; d < x.size(); ++d) x[d] *= hadamard_sign(uint32_t(d));
  walsh_hadamard_blocks(x, s.pow2);
  reflect(x, s);
}

void hadamard_unmix(std::span<float> x) {
  const HadamardShape s = hadamard_shape(uint32_t(x.size()));
  reflect(x, s);  // the reflection and the transform are symmetric: M_h^T reverses the steps
  walsh_hadamard_blocks(x, s.pow2);
  const float inv = 1.0f / float(s.pow2);  // exact
  for (size_t d = 0; d < x.size(); ++d) x[d] *= hadamard_sign(uint32_t(d)) * inv;
}

void hadamard_mix_query(std::span<float> x) {
  hadamard_mix(x);
  const float inv = 1.0f / float(hadamard_shape(uint32_t(x.size())).pow2);
  for (float& v : x) v *= inv;
}

}  // namespace kvscope::kv
