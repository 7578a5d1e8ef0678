#version 450
// RoPE and the KV-cache write in one pass over a token's fused q|k|v row
// (the output of the concatenated wq|wk|wv projection): q heads are rotated in
// place for attention; k heads are rotated and stored with v into the slots
// the cache assigned, quantized into the cache's format (K_* / V_*, kv.glsl);
// kivi2 keys are left rotated in the row for kivi_key_write. With p.hadamard,
// quantized keys are Hadamard-mixed before quantizing and queries alike
// (hadamard.glsl), so q . k is unchanged.
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
#include "rope.glsl"
#include "hadamard.glsl"
// Per-pair divisors of the rotation frequency (rope_dim / 2 floats), read only
// when p.has_freq_factors != 0 (Llama 3's rope_freqs.weight).
layout(std430, binding = 5) readonly buffer FreqFactors { float freq_factors[]; };

layout(push_constant) uniform Push { RopeKvWriteParams p; };

// Pair i of a head at position pos, rotated the way this model rotates
// (rope.glsl: mode, theta, rope_dim, frequency factors).
vec2 rope_pair(vec2 v, uint i, float pos) {
  const bool rotated = 2u * i < p.rope_dim;
  const float factor = rotated && p.has_freq_factors != 0u ? freq_factors[i] : 1.0;
  return rope_rotate(v, i, pos, p.rope_mode, p.theta, p.rope_dim, factor, p.mscale);
}

void main() {
  const uint head = gl_WorkGroupID.x, t = gl_WorkGroupID.y;  // heads [0, n_head) are q's, then kv heads
  if (head >= p.n_head + p.n_kv_head || t >= p.n_tokens) return;
  const float pos = float(positions[t]);
  const uint row = t * p.qkv_stride;
  if (head < p.n_head) {
    const uint base = row + head * p.head_dim;
    if (p.hadamard == 0u || p.keys_unrotated != 0u) {  // rolling: attention turns the keys back instead
      for (uint i = gl_LocalInvocationID.x; i < p.head_dim / 2u; i += gl_WorkGroupSize.x) {
        const uvec2 e = base + rope_pair_dims(i, p.rope_mode, p.rope_dim);
        const vec2 r = rope_pair(vec2(qkv[e.x], qkv[e.y]), i, pos);
        qkv[e.x] = r.x;
        qkv[e.y] = r.y;
      }
      return;
    }
    // Keys are Hadamard-mixed: the query is mixed alike, and scaled by 1/P.
    for (uint i = gl_LocalInvocationID.x; i < p.head_dim / 2u; i += gl_WorkGroupSize.x) {
      const uvec2 d = rope_pair_dims(i, p.rope_mode, p.rope_dim);
      const vec2 r = rope_pair(vec2(qkv[base + d.x], qkv[base + d.y]), i, pos);
      kv_row[d.x] = r.x;
      kv_row[d.y] = r.y;
    }
    barrier();
    hadamard_mix_row(p.head_dim, hadamard_inverse_pow2(p.head_dim));
    for (uint d = gl_LocalInvocationID.x; d < p.head_dim; d += gl_WorkGroupSize.x) qkv[base + d] = kv_row[d];
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
  // f32 goes straight to the cache; f16 pairs its words as (2i, 2i+1), which
  // NeoX pairs are not, and quantized rows are encoded by the whole
  // workgroup: both go through shared memory (kv_row).
  for (uint i = tid; i < p.head_dim / 2u; i += WG) {
    const uvec2 d = rope_pair_dims(i, p.rope_mode, p.rope_dim);
    const vec2 k_raw = vec2(qkv[k_src + d.x], qkv[k_src + d.y]);
    const vec2 k = p.keys_unrotated != 0u ? k_raw : rope_pair(k_raw, i, pos);  // rolling: attention rotates
#if K_ENC == KV_ENC_F32
    k_cache[k_dst + d.x] = floatBitsToUint(k.x);
    k_cache[k_dst + d.y] = floatBitsToUint(k.y);
#else
    kv_row[d.x] = k.x;
    kv_row[d.y] = k.y;
#endif
  }
#if K_ENC == KV_ENC_Q8 || K_ENC == KV_ENC_Q4 || K_ENC == KV_ENC_Q2_CHANNEL
  if (p.hadamard != 0u) {  // quantized keys, Hadamard-mixed first (kv/hadamard.h)
    barrier();
    hadamard_mix_row(p.head_dim, 1.0);
  }
#endif
#if K_ENC == KV_ENC_Q2_CHANNEL
  barrier();
  for (uint d = tid; d < p.head_dim; d += WG) qkv[k_src + d] = kv_row[d];
  barrier();  // kv_row is reused for v
#endif
#if K_ENC == KV_ENC_F16
  barrier();
  for (uint i = tid; i < p.head_dim / 2u; i += WG)
    k_cache[k_dst + i] = packHalf2x16(vec2(kv_row[2u * i], kv_row[2u * i + 1u]));
#if V_ENC != KV_ENC_F32 && V_ENC != KV_ENC_F16
  barrier();  // kv_row is reused for v
#endif
#endif
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
