#version 450
// The gated activation of the FFN over the fused gate|up rows of the w1|w3
// projection: out[t][i] = act(gate[t][i]) * up[t][i], act silu (SwiGLU) or
// GELU in its tanh form (GeGLU, gemma3).
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
  float a;
  if (p.act == 0u) {
    a = g / (1.0 + exp(-g));
  } else {
    // tanh(u) as 1 - 2 / (exp(2u) + 1): exact at both ends (GLSL's tanh may
    // overflow to NaN for large |u| on some drivers).
    const float u = 0.7978845608028654 * (g + 0.044715 * g * g * g);
    a = 0.5 * g * (2.0 - 2.0 / (exp(2.0 * u) + 1.0));
  }
  out_values[t * p.n + i] = a * gate_up[row + p.n + i];
}
