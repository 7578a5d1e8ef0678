#version 450
// RoPE and the KV-cache write in one pass over a token's fused q|k|v row
// (the output of the concatenated wq|wk|wv projection): q heads are rotated in
// place for attention; k heads are rotated and stored with v into the slots
// the cache assigned, quantized into the cache's format (K_* / V_*, kv.glsl);
// kivi2 keys are left rotated in the row for kivi_key_write.
// One dispatch instead of two: on lavapipe each dispatch costs 25-55 us.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;

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
  const uint tid = gl_LocalInvocationID.x;
  const uint k_dst = (kv_head * p.capacity + uint(slot)) * p.kv.k_row_words;
  const uint v_dst = (kv_head * p.capacity + uint(slot)) * p.kv.v_row_words;
  // f32 / f16 go straight to the cache; quantized rows are encoded by the
  // whole workgroup from shared memory (kv_encode_row).
  for (uint i = tid; i < p.head_dim / 2u; i += WG) {
    const uint d = 2u * i;
    const vec2 k = rope_pair(vec2(qkv[k_src + d], qkv[k_src + d + 1u]), i, pos);
#if K_ENC == KV_ENC_F32
    k_cache[k_dst + d] = floatBitsToUint(k.x);
    k_cache[k_dst + d + 1u] = floatBitsToUint(k.y);
#elif K_ENC == KV_ENC_F16
    k_cache[k_dst + i] = packHalf2x16(k);
#elif K_ENC == KV_ENC_Q2_CHANNEL
    qkv[k_src + d] = k.x;
    qkv[k_src + d + 1u] = k.y;
#else
    kv_row[d] = k.x;
    kv_row[d + 1u] = k.y;
#endif
  }
#if K_ENC == KV_ENC_Q8 || K_ENC == KV_ENC_Q4
  barrier();
  kv_encode_row(K_ENC, p.head_dim, p.kv.group_size, p.kv.k_code_words);
  for (uint w = tid; w < p.kv.k_row_words; w += WG) k_cache[k_dst + w] = kv_words[w];
  barrier();  // kv_row and kv_words are reused for v
#endif
#if V_ENC == KV_ENC_F32
  for (uint d = tid; d < p.head_dim; d += WG) v_cache[v_dst + d] = floatBitsToUint(qkv[v_src + d]);
#elif V_ENC == KV_ENC_F16
  for (uint i = tid; i < p.head_dim / 2u; i += WG)
    v_cache[v_dst + i] = packHalf2x16(vec2(qkv[v_src + 2u * i], qkv[v_src + 2u * i + 1u]));
#else
  for (uint d = tid; d < p.head_dim; d += WG) kv_row[d] = qkv[v_src + d];
  barrier();
  kv_encode_row(V_ENC, p.head_dim, p.kv.group_size, p.kv.v_code_words);
  for (uint w = tid; w < p.kv.v_row_words; w += WG) v_cache[v_dst + w] = kv_words[w];
#endif
}
