#version 450
// Matrix-vector product for decode: y[v][row_offset + r] (+)= W[r] . x[v].
// A workgroup owns ROWS_PER_GROUP rows. When several invocations share a row
// (GPUs: coalesced reads) they stride along it one "unit" (a whole word of
// quants, or 4 floats) at a time, then a shared-memory tree reduces each
// row's partial sums. When ROWS_PER_GROUP == wg each invocation owns a whole
// row or several (CPU devices, see rows_dot_whole). Weight bandwidth is the cost of decode.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint ROWS_PER_GROUP = KVSCOPE_MATVEC_ROWS_PER_GROUP;
// ROWS_PER_GROUP < WG: invocations share rows. ROWS_PER_GROUP = WG * k
// (k = 1..4): each invocation owns k whole rows (CPU devices).
const uint THREADS_PER_ROW = ROWS_PER_GROUP >= WG ? 1u : WG / ROWS_PER_GROUP;
const uint ROWS_PER_INVOCATION = ROWS_PER_GROUP >= WG ? ROWS_PER_GROUP / WG : 1u;

#define W_BINDING 0
#define S_BINDING 1
#include "weights.glsl"
layout(std430, binding = 2) readonly buffer X { float x[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

layout(push_constant) uniform Push { MatVecParams p; };

shared float partial[WG];

vec4 x4(uint i) { return vec4(x[i], x[i + 1u], x[i + 2u], x[i + 3u]); }

// Dot product of one row with x[x_base ..]: this invocation's share.
float row_dot(uint row, uint lane, uint x_base) {
  const uint cols = p.cols;
  const uint row_base = row * w_row_words(cols);
  float acc = 0.0;
#if defined(WTYPE_F32)
  const uint full_units = cols / 4u;
  for (uint u = lane; u < full_units; u += THREADS_PER_ROW) {
    const uint c = 4u * u;
    acc += dot(uintBitsToFloat(w_texel(row_base / 4u + u)), x4(x_base + c));
  }
  for (uint c = 4u * full_units + lane; c < cols; c += THREADS_PER_ROW) {
    acc += uintBitsToFloat(w_word(row_base + c)) * x[x_base + c];
  }
#elif defined(WTYPE_F16) || defined(WTYPE_BF16)
  const uint full_units = cols / 2u;
  for (uint u = lane; u < full_units; u += THREADS_PER_ROW) {
    const uint c = 2u * u;
    acc += dot(w_pair(w_word(row_base + u)), vec2(x[x_base + c], x[x_base + c + 1u]));
  }
  if ((cols & 1u) != 0u && lane == 0u) {  // odd cols: the last word holds one element
    acc += w_pair(w_word(row_base + full_units)).x * x[x_base + cols - 1u];
  }
#elif defined(WTYPE_Q8_0)
  const uint words = cols / 4u;  // 8 words per block of 32
  for (uint u = lane; u < words; u += THREADS_PER_ROW) {
    acc += w_scale(row, u / 8u, cols) * dot(q8_unpack(w_word(row_base + u)), x4(x_base + 4u * u));
  }
#elif defined(W_KQUANT) || defined(W_QUADS)
  // cols is a multiple of the block: quads never cross one.
  for (uint u = lane; u < cols / 4u; u += THREADS_PER_ROW) acc += dot(w_quad(row, 4u * u, cols), x4(x_base + 4u * u));
#else  // WTYPE_Q4_0
  const uint words = cols / 8u;  // 4 words per block of 32
  for (uint u = lane; u < words; u += THREADS_PER_ROW) {
    const uint block = u / 4u;
    const uint c = block * 32u + 4u * (u % 4u);  // first low-nibble element
    vec4 low, high;
    q4_unpack(w_word(row_base + u), low, high);
    acc += w_scale(row, block, cols) * (dot(low, x4(x_base + c)) + dot(high, x4(x_base + c + 16u)));
  }
#endif
  return acc;
}

// ---- One whole row per invocation (THREADS_PER_ROW == 1) ----------------
// On CPU devices (lavapipe) the invocations of a group are SIMD lanes: reads
// of x then have the same address in every lane (one scalar load, not a
// gather), and each lane's weight reads are 16 bytes per load instruction.
// Measured on lavapipe: ~3x the throughput of rows shared by invocations.

// x as vec4: used only when cols % 4 == 0, so rows of x are 16-byte aligned.
layout(std430, binding = 2) readonly buffer X4 { vec4 x_vec4[]; };

// Each invocation owns ROWS_PER_INVOCATION rows (row0 + k * WG): every x
// load is then shared by that many rows. On lavapipe (Mesa 22.3) a load at the
// same address in every lane is still a per-lane gather inside a loop, and
// dropping the x loads altogether made matvec 1.8x faster; sharing them over
// 4 rows measured ~10% faster decode than 1 row.
const uint MAX_ROWS_PER_INVOCATION = 4u;

void rows_dot_whole(uint row0, uint x_base, out float acc[MAX_ROWS_PER_INVOCATION]) {
  const uint cols = p.cols;
  uint row_base[MAX_ROWS_PER_INVOCATION];  // in texels
  for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) {
    // Rows past the end read the last row (valid memory) and are not written.
    row_base[k] = min(row0 + k * WG, p.rows - 1u) * w_row_texels(cols);
    acc[k] = 0.0;
  }
#if defined(WTYPE_F32)
  if (cols % 4u == 0u) {
    for (uint i = 0u; i < cols / 4u; ++i) {
      const vec4 xv = x_vec4[x_base / 4u + i];
      for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) acc[k] += dot(uintBitsToFloat(w_texel(row_base[k] + i)), xv);
    }
  } else {
    for (uint c = 0u; c < cols; ++c) {
      const float xc = x[x_base + c];
      for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) acc[k] += uintBitsToFloat(w_word(4u * row_base[k] + c)) * xc;
    }
  }
#elif defined(WTYPE_F16) || defined(WTYPE_BF16)
  if (cols % 8u == 0u) {
    for (uint i = 0u; i < cols / 8u; ++i) {
      const vec4 x_lo = x_vec4[x_base / 4u + 2u * i], x_hi = x_vec4[x_base / 4u + 2u * i + 1u];
      for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) {
        const uvec4 words = w_texel(row_base[k] + i);
        acc[k] += dot(vec4(w_pair(words.x), w_pair(words.y)), x_lo) +
                  dot(vec4(w_pair(words.z), w_pair(words.w)), x_hi);
      }
    }
  } else {
    for (uint c = 0u; c < cols; ++c) {
      const float xc = x[x_base + c];
      for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k)
        acc[k] += w_element(min(row0 + k * WG, p.rows - 1u), c, cols) * xc;
    }
  }
#elif defined(W_KQUANT)
  // One group of 64 elements at a time: its x (16 vec4) is loaded once and
  // serves every row of this invocation; the weights are never expanded to
  // floats, scales multiply per-piece sums (kq_group_dot).
  const uint x4_base = x_base / 4u;
  for (uint b = 0u; b < cols / W_BLOCK; ++b) {
    for (uint g = 0u; g < 4u; ++g) {
      vec4 xg[16];
      for (uint i = 0u; i < 16u; ++i) xg[i] = x_vec4[x4_base + b * 64u + g * 16u + i];
      vec2 xsums = vec2(0.0);
#if !defined(WTYPE_Q6_K)
      for (uint i = 0u; i < 8u; ++i) xsums += vec2(dot(xg[i], vec4(1.0)), dot(xg[8u + i], vec4(1.0)));
#endif
      for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) {
        const uint row = min(row0 + k * WG, p.rows - 1u);
        acc[k] += kq_group_dot(row, row_base[k] + b * KQ_BLOCK_TEXELS, b, g, cols, xg, xsums);
      }
    }
  }
#elif defined(W_QUADS_256)
  // Four elements at a time through w_quad; each x quad serves every row.
  const uint x4_base = x_base / 4u;
  for (uint i = 0u; i < cols / 4u; ++i) {
    const vec4 xv = x_vec4[x4_base + i];
    for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) acc[k] += dot(w_quad(min(row0 + k * WG, p.rows - 1u), 4u * i, cols), xv);
  }
#elif defined(W_QUADS)
  // A block of 32 at a time (w_block32: its scale read once); its x serves every row.
  const uint x4_base = x_base / 4u;
  for (uint b = 0u; b < cols / 32u; ++b) {
    vec4 xb[8];
    for (uint i = 0u; i < 8u; ++i) xb[i] = x_vec4[x4_base + b * 8u + i];
    for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) {
      vec4 lo[4], hi[4];
      w_block32(min(row0 + k * WG, p.rows - 1u), b, cols, lo, hi);
      for (uint i = 0u; i < 4u; ++i) acc[k] += dot(lo[i], xb[i]) + dot(hi[i], xb[4u + i]);
    }
  }
#else
  const uint x4_base = x_base / 4u;
  const uint n_blocks = cols / W_BLOCK;
  for (uint b = 0u; b < n_blocks; ++b) {
    vec4 xb[8];  // the block's 32 x values
    for (uint i = 0u; i < 8u; ++i) xb[i] = x_vec4[x4_base + b * 8u + i];
    for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) {
      const float d = w_scale(min(row0 + k * WG, p.rows - 1u), b, cols);
      float block_acc = 0.0;
#if defined(WTYPE_Q8_0)
      for (uint half_block = 0u; half_block < 2u; ++half_block) {
        const uvec4 words = w_texel(row_base[k] + b * 2u + half_block);
        const uint x4 = half_block * 4u;
        block_acc += dot(q8_unpack(words.x), xb[x4]) + dot(q8_unpack(words.y), xb[x4 + 1u]) +
                     dot(q8_unpack(words.z), xb[x4 + 2u]) + dot(q8_unpack(words.w), xb[x4 + 3u]);
      }
#else
      const uvec4 words = w_texel(row_base[k] + b);
      for (uint i = 0u; i < 4u; ++i) {
        vec4 low, high;
        q4_unpack(words[i], low, high);
        block_acc += dot(low, xb[i]) + dot(high, xb[4u + i]);
      }
#endif
      acc[k] += d * block_acc;
    }
  }
#endif
}

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint local_row = tid / THREADS_PER_ROW, lane = tid % THREADS_PER_ROW;
  const uint row = gl_WorkGroupID.x * ROWS_PER_GROUP + local_row;
  const uint v = gl_WorkGroupID.y;

  if (THREADS_PER_ROW == 1u) {  // a specialization constant: the other branch is compiled away
    const uint row0 = gl_WorkGroupID.x * ROWS_PER_GROUP + tid;
    float sums[MAX_ROWS_PER_INVOCATION];
    rows_dot_whole(row0, v * p.cols, sums);
    for (uint k = 0u; k < ROWS_PER_INVOCATION; ++k) {
      const uint r = row0 + k * WG;
      if (r >= p.rows) break;
      const uint out_index = v * p.y_stride + p.row_offset + r;
      y[out_index] = p.accumulate != 0u ? y[out_index] + sums[k] : sums[k];
    }
    return;
  }
  partial[tid] = row < p.rows ? row_dot(row, lane, v * p.cols) : 0.0;
  barrier();
  // Tree over the row's invocations (contiguous in `partial`).
  for (uint stride = THREADS_PER_ROW / 2u; stride > 0u; stride >>= 1) {
    if (lane < stride) partial[tid] += partial[tid + stride];
    barrier();
  }
  if (lane == 0u && row < p.rows) {
    const uint out_index = v * p.y_stride + p.row_offset + row;
    y[out_index] = p.accumulate != 0u ? y[out_index] + partial[tid] : partial[tid];
  }
}
