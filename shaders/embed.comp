#version 450
// Token embedding: out[t] = row ids[t] of the table, dequantized to f32.
// Chunked tables: each chunk's dispatch writes only the tokens whose ids fall
// in its rows (params.h, EmbedParams).
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer TokenIds { int ids[]; };
#define W_BINDING 1
#define S_BINDING 2
#include "weights.glsl"
layout(std430, binding = 3) writeonly buffer Out { float out_rows[]; };

layout(push_constant) uniform Push { EmbedParams p; };

void main() {
  const uint t = gl_WorkGroupID.x;
  if (t >= p.n_tokens) return;
  const int id = ids[t];
  if (id < int(p.row_offset) || id >= int(p.row_offset + p.n_vocab)) return;
  const uint row = uint(id) - p.row_offset;  // row within the bound chunk
#if defined(W_KQUANT) || defined(W_QUADS)
  // Four elements per read: their scales and quants share words (dim % 256 == 0).
  for (uint q = gl_LocalInvocationID.x; q < p.dim / 4u; q += gl_WorkGroupSize.x) {
    const vec4 v = w_quad(row, 4u * q, p.dim);
    for (uint i = 0u; i < 4u; ++i) out_rows[t * p.dim + 4u * q + i] = v[i] * p.scale;
  }
#else
  for (uint d = gl_LocalInvocationID.x; d < p.dim; d += gl_WorkGroupSize.x) {
    out_rows[t * p.dim + d] = w_element(row, d, p.dim) * p.scale;
  }
#endif
}
