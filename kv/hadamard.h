// The Hadamard rotation of quantized keys: an orthogonal mixing of each head
// vector applied before quantizing, so that a few large channels (keys have
// them: the outliers that set every group's step) are spread over all
// elements and no group's range is ruled by one. Queries get the same mixing
// (scaled), so q . k is unchanged and attention needs nothing else
// (QuaRot, llama.cpp's rotated quantized caches, TurboQuant).
//
// head_dim = P * M with P the largest power of two dividing it and M odd.
// Element d = i * P + j (block i of M, column j of P). The mixing is
//   1. signs: x[d] *= sign(d), a fixed pseudo-random +-1 per element;
//   2. an unnormalized Walsh-Hadamard transform of every block of P:
//      butterflies (a, b) -> (a + b, a - b), strides 1, 2, 4, ... P/2;
//   3. for 3 <= M <= 15, the Householder reflection I - (2/M) 1 1^T across
//      the M blocks of each column j: x[i*P + j] -= c * sum_i x[i*P + j],
//      c = f32(2/M), the sum in order of i, no fused multiply-add.
// Steps 1-2 are exact in f32 up to the additions' rounding, which happens in
// the same order on the CPU and on every device; step 3 rounds the same way
// too. So the mixed key, and the codes quantized from it, are bit for bit the
// same as this reference (shaders/common/hadamard.glsl mirrors it).
// The mixing M_h satisfies M_h^T M_h = P I: keys are stored as M_h k, queries
// become M_h q / P (exact: P is a power of two), and q . k = (M_h q / P) . (M_h k).
// unmix() is the inverse, M_h^T x / P (rolling StreamingLLM turns stored keys
// back before applying RoPE at their cache-relative position).
#pragma once
#include <cstdint>
#include <span>

namespace kvscope::kv {

struct HadamardShape {
  uint32_t pow2 = 1;  // P
  uint32_t odd = 1;   // M
};
HadamardShape hadamard_shape(uint32_t head_dim);
// The sign of element d (+1 or -1).
float hadamard_sign(uint32_t d);
// c = f32(2/M) for 3 <= M <= 15, else 0 (no reflection).
float hadamard_reflection(uint32_t odd);

void hadamard_mix(std::span<float> x);    // x <- M_h x
void hadamard_unmix(std::span<float> x);  // x <- M_h^T x / P
// A query: x <- M_h x / P.
void hadamard_mix_query(std::span<float> x);

}  // namespace kvscope::kv
