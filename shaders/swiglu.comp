#version 450
// SwiGLU activation of the FFN: out = silu(gate) * up.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Gate { float gate[]; };
layout(std430, binding = 1) readonly buffer Up { float up[]; };
layout(std430, binding = 2) writeonly buffer Out { float out_values[]; };

layout(push_constant) uniform Push { SwigluParams p; };

void main() {
  const uint i = gl_GlobalInvocationID.x;
  if (i >= p.n) return;
  const float g = gate[i];
  out_values[i] = g / (1.0 + exp(-g)) * up[i];
}
