#version 450
// RoPE and the KV-cache write in one pass over a token's fused q|k|v row
// (the output of the concatenated wq|wk|wv projection): q heads are rotated in
// place for attention; k heads are rotated and stored with v into the slots
// the cache assigned, converted to the cache's format (KV_F32 / KV_F16).
// One dispatch instead of two: on lavapipe each dispatch costs 25-55 us.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) buffer Qkv { float qkv[]; };
layout(std430, binding = 1) readonly buffer Positions { int positions[]; };
layout(std430, binding = 2) readonly buffer Slots { int slots[]; };
#define K_BINDING 3
#define V_BINDING 4
#define KV_WRITER
#include "kv.glsl"

layout(push_constant) uniform Push { RopeKvWriteParams p; };

// The pair (x, y) = dims (2i, 2i+1) of a head, rotated by pos * theta^(-2i/rope_dim)
// (the same expression as reference::rope); dims >= rope_dim are not rotated.
vec2 rope_pair(vec2 v, uint i, float pos) {
  if (2u * i >= p.rope_dim) return v;
  const float angle = pos * pow(p.theta, -float(2u * i) / float(p.rope_dim));
  const float c = cos(angle), s = sin(angle);
  return vec2(v.x * c - v.y * s, v.x * s + v.y * c);
}

void main() {
  const uint head = gl_WorkGroupID.x, t = gl_WorkGroupID.y;  // heads [0, n_head) are q's, then kv heads
  if (head >= p.n_head + p.n_kv_head || t >= p.n_tokens) return;
  const float pos = float(positions[t]);
  const uint row = t * p.qkv_stride;
  if (head < p.n_head) {
    const uint base = row + head * p.head_dim;
    for (uint i = gl_LocalInvocationID.x; i < p.head_dim / 2u; i += gl_WorkGroupSize.x) {
      const uint e = base + 2u * i;
      const vec2 r = rope_pair(vec2(qkv[e], qkv[e + 1u]), i, pos);
      qkv[e] = r.x;
      qkv[e + 1u] = r.y;
    }
    return;
  }
  const uint kv_head = head - p.n_head;
  const int slot = slots[t * p.n_kv_head + kv_head];
  if (slot < 0 || uint(slot) >= p.capacity) return;  // not stored in this head
  const uint kv_dim = p.n_kv_head * p.head_dim;
  const uint k_src = row + p.n_head * p.head_dim + kv_head * p.head_dim;
  const uint v_src = k_src + kv_dim;
  const uint dst = (kv_head * p.capacity + uint(slot)) * p.head_dim;
  for (uint i = gl_LocalInvocationID.x; i < p.head_dim / 2u; i += gl_WorkGroupSize.x) {
    const uint d = 2u * i;
    k_store2(dst + d, rope_pair(vec2(qkv[k_src + d], qkv[k_src + d + 1u]), i, pos));
    v_store2(dst + d, vec2(qkv[v_src + d], qkv[v_src + d + 1u]));
  }
}
