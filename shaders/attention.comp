#version 450
// Attention of one query head of one token over the live slots of its kv head
// (workgroup (head, token)), dequantizing the cache on read in its format
// (K_* / V_* variants: k_dot and v_at in kv.glsl; no dequantized copy exists).
// Pass 1 writes the scaled scores of visible slots into the probs row (binding
// 6, which doubles as the attention probe) and finds their max; pass 2 turns
// them into exp(score - max) and sums; pass 3 normalizes; then invocations
// split head_dim and accumulate the values. Any capacity works: the row lives
// in the probs buffer, not in shared memory. Rolling StreamingLLM (p.rolling)
// stores keys un-rotated; pass 1 then rotates each at its slot's
// cache-relative position (rolling_k_dot).
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
#include "reduce.glsl"

layout(std430, binding = 0) readonly buffer Q { float q[]; };
shared float q_scaled[KVSCOPE_ATTENTION_MAX_HEAD_DIM];
shared float q_group_sum[KVSCOPE_ATTENTION_MAX_HEAD_DIM];  // q4 / 2-bit keys: the min's weight per group
#define K_BINDING 1
#define V_BINDING 2
#define KV_READER
#include "kv.glsl"
layout(std430, binding = 3) readonly buffer SlotPositions { int slot_pos[]; };
layout(std430, binding = 4) readonly buffer QueryPositions { int query_pos[]; };
layout(std430, binding = 5) writeonly buffer Out { float out_values[]; };
layout(std430, binding = 6) coherent buffer Probs { float probs[]; };
layout(std430, binding = 7) readonly buffer OpenBlocks { int open_blocks[]; };
// Rolling StreamingLLM only (p.rolling != 0): each slot's cache-relative
// position, and the model's per-pair frequency divisors (Llama 3).
layout(std430, binding = 8) readonly buffer RopePositions { int rope_pos[]; };
layout(std430, binding = 9) readonly buffer FreqFactors { float freq_factors[]; };

layout(push_constant) uniform Push { AttentionParams p; };
#include "rope.glsl"

// Slots per kv head in this layer's key and value caches (a sliding-window
// layer holds fewer than the probs rows and slot tables are wide).
uint kv_slots() { return p.kv_slots == 0u ? p.capacity : p.kv_slots; }

// q . k for an un-rotated key, rotated here at its cache-relative position
// (after dequantization, pair by pair, as rope_kv_write would have rotated it).
float rolling_k_dot(uint kv_head, uint slot, int open_block) {
  const float pos = float(rope_pos[kv_head * p.capacity + slot]);
  float score = 0.0;
  for (uint i = 0u; i < p.head_dim / 2u; ++i) {
    const uvec2 d = rope_pair_dims(i, p.rope_mode, p.rope_dim);
    const vec2 k = vec2(k_at(kv_head, slot, d.x, kv_slots(), p.head_dim, p.kv, open_block),
                        k_at(kv_head, slot, d.y, kv_slots(), p.head_dim, p.kv, open_block));
    const float factor = 2u * i < p.rope_dim && p.has_freq_factors != 0u ? freq_factors[i] : 1.0;
    const vec2 r = rope_rotate(k, i, pos, p.rope_mode, p.rope_theta, p.rope_dim, factor, p.rope_mscale);
    score += q_scaled[d.x] * r.x + q_scaled[d.y] * r.y;
  }
  return score;
}

// Whether a slot holding token position `sp` is visible to a query at
// `position`: live, not in the query's future, and within the layer's window.
bool visible(int sp, int position) {
  return sp >= 0 && sp <= position && (p.window == 0u || uint(position - sp) < p.window);
}

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint head = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
  if (head >= p.n_head || t >= p.n_tokens) return;  // uniform per workgroup
  const uint kv_head = head / (p.n_head / p.n_kv_head);
  const int position = query_pos[t];
  const uint q_base = t * p.q_stride + head * p.head_dim;
  const uint out_base = (t * p.n_head + head) * p.head_dim;
  const uint probs_base = (t * p.n_head + head) * p.capacity;
  const uint slot_base = kv_head * p.capacity;  // into slot_pos
  const uint n_slots = min(p.n_slots, kv_slots());

  for (uint d = tid; d < p.head_dim; d += WG) q_scaled[d] = q[q_base + d] * p.scale;
  barrier();
#if K_ENC == KV_ENC_Q4 || K_ENC == KV_ENC_Q2
  for (uint g = tid; g < p.head_dim / p.kv.group_size; g += WG) {
    float sum = 0.0;
    for (uint d = g * p.kv.group_size; d < (g + 1u) * p.kv.group_size; ++d) sum += q_scaled[d];
    q_group_sum[g] = sum;
  }
  barrier();
#endif
  const int open_block = open_blocks[kv_head];

  // Pass 1: scores of visible slots, and their max.
  float local_max = uintBitsToFloat(0xff800000u);  // -inf
  for (uint s = tid; s < n_slots; s += WG) {
    const int sp = slot_pos[slot_base + s];
    if (!visible(sp, position)) continue;
    // A uniform branch: without rolling, the cost is one push-constant test per slot.
    const float score = p.rolling != 0u ? rolling_k_dot(kv_head, s, open_block)
                                         : k_dot(kv_head, s, kv_slots(), p.head_dim, p.kv, open_block);
    probs[probs_base + s] = score;
    local_max = max(local_max, score);
  }
  const float row_max = workgroup_max(local_max);

  // Pass 2: exponentials (each invocation revisits its own slots) and sum.
  float local_sum = 0.0;
  for (uint s = tid; s < p.capacity; s += WG) {
    const int sp = s < n_slots ? slot_pos[slot_base + s] : -1;
    float e = 0.0;
    if (visible(sp, position)) {
      e = exp(probs[probs_base + s] - row_max);
      local_sum += e;
    }
    probs[probs_base + s] = e;
  }
  const float sum = workgroup_sum(local_sum);
  const float inv_sum = sum > 0.0 ? 1.0 / sum : 0.0;

  // Pass 3: normalize.
  for (uint s = tid; s < n_slots; s += WG) probs[probs_base + s] *= inv_sum;
  memoryBarrierBuffer();
  barrier();

  // Values: the invocations form WG / lanes slices of `lanes` head dims each
  // (lanes = min(head_dim, WG)); each slice sums a strided share of the
  // slots and the slices' partial sums meet in shared memory. With WG <=
  // head_dim (lavapipe: 64 invocations, head_dim 48) there is one slice and
  // the order of the sum is the plain slot order. Masked and empty slots are
  // skipped, not multiplied by 0: an empty slot may hold anything, NaN
  // included.
  const uint lanes = min(p.head_dim, WG), slices = WG / lanes;
  const uint lane = tid % lanes, slice = tid / lanes;
  for (uint d0 = 0u; d0 < p.head_dim; d0 += lanes) {
    const uint d = d0 + lane;
    float acc = 0.0;
    if (slice < slices && d < p.head_dim) {
      for (uint s = slice; s < n_slots; s += slices) {
        const int sp = slot_pos[slot_base + s];
        if (!visible(sp, position)) continue;
        acc += probs[probs_base + s] * v_at(kv_head, s, d, kv_slots(), p.kv);
      }
    }
    if (slices == 1u) {  // invocations past the one slice (WG % head_dim) hold nothing
      if (slice == 0u && d < p.head_dim) out_values[out_base + d] = acc;
      continue;
    }
    reduce_scratch[tid] = acc;
    barrier();
    if (slice == 0u && d < p.head_dim) {
      float total = 0.0;
      for (uint j = 0u; j < slices; ++j) total += reduce_scratch[j * lanes + lane];
      out_values[out_base + d] = total;
    }
    barrier();
  }
}
