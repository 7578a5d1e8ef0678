#version 450
// Matrix-vector product for decode: y[v][row_offset + r] (+)= W[r] . x[v].
// A workgroup owns ROWS_PER_GROUP rows; the wg / ROWS_PER_GROUP invocations
// of a row stride along it one "unit" (a whole word of quants, or 4 floats)
// at a time, so weights are read as whole words, then a shared-memory tree
// reduces each row's partial sums. Weight bandwidth is the cost of decode.
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

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint local_row = tid / THREADS_PER_ROW, lane = tid % THREADS_PER_ROW;
  const uint row = gl_WorkGroupID.x * ROWS_PER_GROUP + local_row;
  const uint v = gl_WorkGroupID.y;

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
