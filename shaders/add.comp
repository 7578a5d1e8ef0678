#version 450
// Elementwise sum (residual connections not fused into a matvec).
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) writeonly buffer Out { float out_values[]; };

layout(push_constant) uniform Push { AddParams p; };

void main() {
  const uint i = gl_GlobalInvocationID.x;
  if (i < p.n) out_values[i] = a[i] + b[i];
}
