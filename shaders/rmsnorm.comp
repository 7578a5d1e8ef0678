#version 450
// RMS norm, one workgroup per row: out = x / sqrt(mean(x^2) + eps) * weight,
// or out += that (accumulate).
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
#include "reduce.glsl"

// Out may be the same buffer as X (per-head norms in place): each element is
// read and then written by the same invocation, nothing else touches it.
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Weight { float weight[]; };
layout(std430, binding = 2) buffer Out { float out_rows[]; };

layout(push_constant) uniform Push { RmsNormParams p; };

void main() {
  const uint row = gl_WorkGroupID.x;  // uniform per workgroup: early exit is safe
  if (row >= p.n_rows) return;
  const uint base = p.rows_per_group == 0u
                        ? row * p.n
                        : (row / p.rows_per_group) * p.group_stride + p.row_offset + (row % p.rows_per_group) * p.n;
  float sum_sq = 0.0;
  for (uint i = gl_LocalInvocationID.x; i < p.n; i += WG) sum_sq += x[base + i] * x[base + i];
  sum_sq = workgroup_sum(sum_sq);
  const float inv_rms = 1.0 / sqrt(sum_sq / float(p.n) + p.eps);
  for (uint i = gl_LocalInvocationID.x; i < p.n; i += WG) {
    const float v = x[base + i] * inv_rms * weight[i];
    out_rows[base + i] = p.accumulate != 0u ? out_rows[base + i] + v : v;
  }
}
