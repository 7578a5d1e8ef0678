#version 450
// SwiGLU activation of the FFN over the fused gate|up rows of the w1|w3
// projection: out[t][i] = silu(gate[t][i]) * up[t][i].
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer GateUp { float gate_up[]; };
layout(std430, binding = 1) writeonly buffer Out { float out_values[]; };

layout(push_constant) uniform Push { SwigluParams p; };

void main() {
  const uint i = gl_GlobalInvocationID.x, t = gl_GlobalInvocationID.y;
  if (i >= p.n || t >= p.n_tokens) return;
  const uint row = t * p.in_stride;
  const float g = gate_up[row + i];
  out_values[t * p.n + i] = g / (1.0 + exp(-g)) * gate_up[row + p.n + i];
}
