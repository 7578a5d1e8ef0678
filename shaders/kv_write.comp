#version 450
// Writes the new tokens' k and v rows into the slots the cache assigned, per
// kv head, converting to the cache's storage format (KV_F32 / KV_F16).
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) readonly buffer Slots { int slots[]; };
#define K_BINDING 3
#define V_BINDING 4
#define KV_WRITER
#include "kv.glsl"

layout(push_constant) uniform Push { KvWriteParams p; };

void main() {
  const uint kv_head = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
  if (kv_head >= p.n_kv_head || t >= p.n_tokens) return;
  const int slot = slots[t * p.n_kv_head + kv_head];
  if (slot < 0 || uint(slot) >= p.capacity) return;  // not stored in this head
  const uint src = (t * p.n_kv_head + kv_head) * p.head_dim;
  const uint dst = (kv_head * p.capacity + uint(slot)) * p.head_dim;
  for (uint pair = gl_LocalInvocationID.x; pair < p.head_dim / 2u; pair += gl_WorkGroupSize.x) {
    const uint d = 2u * pair;
    k_store2(dst + d, vec2(k[src + d], k[src + d + 1u]));
    v_store2(dst + d, vec2(v[src + d], v[src + d + 1u]));
  }
}
