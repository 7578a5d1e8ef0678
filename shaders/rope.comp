#version 450
// Rotary position embedding, adjacent pairs (llama "normal" mode), in place on
// q and k. Workgroup (head, token); heads [0, n_head_q) are q's, the rest k's.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) buffer Q { float q[]; };
layout(std430, binding = 1) buffer K { float k[]; };
layout(std430, binding = 2) readonly buffer Positions { int positions[]; };

layout(push_constant) uniform Push { RopeParams p; };

// Rotates the pair at `base` of q or k by `angle`.
vec2 rotate(vec2 v, float angle) {
  const float c = cos(angle), s = sin(angle);
  return vec2(v.x * c - v.y * s, v.x * s + v.y * c);
}

void main() {
  const uint head = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
  if (head >= p.n_head_q + p.n_head_k || t >= p.n_tokens) return;
  const float pos = float(positions[t]);
  const bool is_q = head < p.n_head_q;
  const uint base = is_q ? (t * p.n_head_q + head) * p.head_dim
                         : (t * p.n_head_k + (head - p.n_head_q)) * p.head_dim;
  for (uint i = gl_LocalInvocationID.x; i < p.rope_dim / 2u; i += gl_WorkGroupSize.x) {
    // Same expression as reference::rope: theta^(-2i/rope_dim).
    const float freq = pow(p.theta, -float(2u * i) / float(p.rope_dim));
    const float angle = pos * freq;
    const uint e = base + 2u * i;
    if (is_q) {
      const vec2 r = rotate(vec2(q[e], q[e + 1u]), angle);
      q[e] = r.x;
      q[e + 1u] = r.y;
    } else {
      const vec2 r = rotate(vec2(k[e], k[e + 1u]), angle);
      k[e] = r.x;
      k[e + 1u] = r.y;
    }
  }
}
