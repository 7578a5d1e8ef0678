#version 450
// Elementwise sum; with b_period, b repeats along a (one bias row added to
// every token's row: the q|k|v biases of qwen2, in place on the qkv rows).
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) buffer A { float a[]; };  // may be `out` itself (in place)
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) buffer Out { float out_values[]; };

layout(push_constant) uniform Push { AddParams p; };

void main() {
  const uint i = gl_GlobalInvocationID.x;
  if (i < p.n) out_values[i] = a[i] + b[p.b_period == 0u ? i : i % p.b_period];
}
