#version 450
// Matrix-vector product for decode: y[v][row_offset + r] (+)= W[r] . x[v].
// A workgroup owns ROWS_PER_GROUP rows. When several invocations share a row
// (GPUs: coalesced reads) they stride along it one "unit" (a whole word of
// quants, or 4 floats) at a time, then a shared-memory tree reduces each
// row's partial sums. When ROWS_PER_GROUP == wg each invocation owns a whole
// row (CPU devices, see row_dot_whole). Weight bandwidth is the cost of decode.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint ROWS_PER_GROUP = KVSCOPE_MATVEC_ROWS_PER_GROUP;
const uint THREADS_PER_ROW = WG / ROWS_PER_GROUP;

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
    acc += dot(vec4(w_values[row_base + c], w_values[row_base + c + 1u], w_values[row_base + c + 2u],
                    w_values[row_base + c + 3u]),
               x4(x_base + c));
  }
  for (uint c = 4u * full_units + lane; c < cols; c += THREADS_PER_ROW) {
    acc += w_values[row_base + c] * x[x_base + c];
  }
#elif defined(WTYPE_F16)
  const uint full_units = cols / 2u;
  for (uint u = lane; u < full_units; u += THREADS_PER_ROW) {
    const uint c = 2u * u;
    acc += dot(unpackHalf2x16(w_values[row_base + u]), vec2(x[x_base + c], x[x_base + c + 1u]));
  }
  if ((cols & 1u) != 0u && lane == 0u) {  // odd cols: the last word holds one element
    acc += unpackHalf2x16(w_values[row_base + full_units]).x * x[x_base + cols - 1u];
  }
#elif defined(WTYPE_Q8_0)
  const uint words = cols / 4u;  // 8 words per block of 32
  for (uint u = lane; u < words; u += THREADS_PER_ROW) {
    acc += w_scale(row, u / 8u, cols) * dot(q8_unpack(w_values[row_base + u]), x4(x_base + 4u * u));
  }
#else  // WTYPE_Q4_0
  const uint words = cols / 8u;  // 4 words per block of 32
  for (uint u = lane; u < words; u += THREADS_PER_ROW) {
    const uint block = u / 4u;
    const uint c = block * 32u + 4u * (u % 4u);  // first low-nibble element
    vec4 low, high;
    q4_unpack(w_values[row_base + u], low, high);
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
#if defined(WTYPE_F32)
layout(std430, binding = W_BINDING) readonly buffer WeightValues4 { vec4 w_values4[]; };
#else
// Rows of Q8_0/Q4_0 (and of F16 when cols % 8 == 0) are whole numbers of uvec4.
layout(std430, binding = W_BINDING) readonly buffer WeightValues4 { uvec4 w_values4[]; };
#endif

float row_dot_whole(uint row, uint x_base) {
  const uint cols = p.cols;
  const uint row_base = row * w_row_words(cols);
  float acc = 0.0;
#if defined(WTYPE_F32)
  if (cols % 4u == 0u) {
    for (uint i = 0u; i < cols / 4u; ++i) acc += dot(w_values4[row_base / 4u + i], x_vec4[x_base / 4u + i]);
  } else {
    for (uint c = 0u; c < cols; ++c) acc += w_values[row_base + c] * x[x_base + c];
  }
#elif defined(WTYPE_F16)
  if (cols % 8u == 0u) {
    for (uint i = 0u; i < cols / 8u; ++i) {
      const uvec4 words = w_values4[row_base / 4u + i];
      acc += dot(vec4(unpackHalf2x16(words.x), unpackHalf2x16(words.y)), x_vec4[x_base / 4u + 2u * i]) +
             dot(vec4(unpackHalf2x16(words.z), unpackHalf2x16(words.w)), x_vec4[x_base / 4u + 2u * i + 1u]);
    }
  } else {
    for (uint c = 0u; c < cols; ++c) acc += w_element(row, c, cols) * x[x_base + c];
  }
#else
  const uint scale_base = row * s_row_words(cols);
  const uint x4_base = x_base / 4u;
  const uint n_blocks = cols / W_BLOCK;
  for (uint block = 0u; block < n_blocks; block += 2u) {
    const vec2 scales = unpackHalf2x16(w_scales[scale_base + block / 2u]);  // two blocks' scales
    const uint n = min(2u, n_blocks - block);
    for (uint j = 0u; j < n; ++j) {
      const uint b = block + j;
      float block_acc = 0.0;
#if defined(WTYPE_Q8_0)
      for (uint half_block = 0u; half_block < 2u; ++half_block) {
        const uvec4 words = w_values4[row_base / 4u + b * 2u + half_block];
        const uint x4 = x4_base + b * 8u + half_block * 4u;
        block_acc += dot(q8_unpack(words.x), x_vec4[x4]) + dot(q8_unpack(words.y), x_vec4[x4 + 1u]) +
                     dot(q8_unpack(words.z), x_vec4[x4 + 2u]) + dot(q8_unpack(words.w), x_vec4[x4 + 3u]);
      }
#else
      const uvec4 words = w_values4[row_base / 4u + b];
      for (uint i = 0u; i < 4u; ++i) {
        vec4 low, high;
        q4_unpack(words[i], low, high);
        block_acc += dot(low, x_vec4[x4_base + b * 8u + i]) + dot(high, x_vec4[x4_base + b * 8u + 4u + i]);
      }
#endif
      acc += (j == 0u ? scales.x : scales.y) * block_acc;
    }
  }
#endif
  return acc;
}

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint local_row = tid / THREADS_PER_ROW, lane = tid % THREADS_PER_ROW;
  const uint row = gl_WorkGroupID.x * ROWS_PER_GROUP + local_row;
  const uint v = gl_WorkGroupID.y;

  if (THREADS_PER_ROW == 1u) {  // a specialization constant: the other branch is compiled away
    if (row < p.rows) {
      const float sum = row_dot_whole(row, v * p.cols);
      const uint out_index = v * p.y_stride + p.row_offset + row;
      y[out_index] = p.accumulate != 0u ? y[out_index] + sum : sum;
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
