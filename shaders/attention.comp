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
// cache-relative position (rolling_k_dot), after turning a Hadamard-mixed
// key back. kivi2 reads its newest keys and values in f16 (key_at,
// value_at); sparse-V (p.sparse_v) skips values weighted below it.
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

// kivi2 only (p.step_rows != 0): the step's slots int[n_tokens][n_kv_head].
layout(std430, binding = 10) readonly buffer StepSlots { int step_slots[]; };

layout(push_constant) uniform Push { AttentionParams p; };
#include "rope.glsl"
#include "hadamard.glsl"

// Slots per kv head in this layer's key and value caches (a sliding-window
// layer holds fewer than the probs rows and slot tables are wide).
uint kv_slots() { return p.kv_slots == 0u ? p.capacity : p.kv_slots; }

// kivi2 keeps the newest tokens in f16 (kv::TensorImage::read_for_query is
// the rule): a query reads its own block's keys and the last v_window
// positions' values in f16, the step's own tokens from their qkv rows
// (rounded to f16 as a window would hold them), older ones from the windows.
#if K_ENC == KV_ENC_Q2_CHANNEL || V_ENC == KV_ENC_Q2
// The qkv row of the step's token at position sp, or -1.
int step_row(int sp) {
  if (p.step_rows == 0u) return -1;
  const int r = sp - query_pos[0];
  return r >= 0 && uint(r) < p.n_tokens ? r : -1;
}
float f16_round(float x) { return unpackHalf2x16(packHalf2x16(vec2(x, 0.0))).x; }
#endif
#if K_ENC == KV_ENC_Q2_CHANNEL
// Per workgroup: the block of the query's own slot (-1: not stored).
int query_block = -1;
// Element d of the key in `slot` (position sp): in the query's own block in
// f16, the step's from its qkv row, an earlier step's from the window (which
// kivi_key_write fills after attention); else through k_at.
float key_at(uint kv_head, uint slot, int sp, uint d, int open_block) {
  if (int(slot / p.kv.token_group) == query_block) {
    const int r = step_row(sp);
    if (r >= 0) return f16_round(q[uint(r) * p.q_stride + (p.n_head + kv_head) * p.head_dim + d]);
    const uint recent_rows = min(p.kv.token_group, kv_slots());
    const uint base = p.kv.k_recent_offset + (kv_head * recent_rows + slot % p.kv.token_group) * (p.head_dim / 2u);
    const vec2 pair = unpackHalf2x16(k_cache[base + d / 2u]);
    return (d & 1u) == 0u ? pair.x : pair.y;
  }
  return k_at(kv_head, slot, d, kv_slots(), p.head_dim, p.kv, open_block);
}
#else
float key_at(uint kv_head, uint slot, int sp, uint d, int open_block) {
  return k_at(kv_head, slot, d, kv_slots(), p.head_dim, p.kv, open_block);
}
#endif

// q . k of the key in `slot` (position sp).
float key_score(uint kv_head, uint slot, int sp, int open_block) {
#if K_ENC == KV_ENC_Q2_CHANNEL
  if (int(slot / p.kv.token_group) == query_block) {  // read in f16: the step's row or the window
    float score = 0.0;
    for (uint d = 0u; d < p.head_dim; ++d) score += q_scaled[d] * key_at(kv_head, slot, sp, d, open_block);
    return score;
  }
#endif
  return k_dot(kv_head, slot, kv_slots(), p.head_dim, p.kv, open_block);
}

// Element d of the value in `slot` (position sp) for a query at `position`.
float value_at(uint kv_head, uint slot, int sp, uint d, int position) {
#if V_ENC == KV_ENC_Q2
  const uint W = p.kv.v_window;
  if (uint(position - sp) < W) {
    const int r = step_row(sp);
    if (r >= 0) return f16_round(q[uint(r) * p.q_stride + (p.n_head + p.n_kv_head + kv_head) * p.head_dim + d]);
    const uint row = p.kv.v_recent_offset + (kv_head * W + uint(sp) % W) * (1u + p.head_dim / 2u);
    if (int(v_cache[row]) == sp) {
      const vec2 pair = unpackHalf2x16(v_cache[row + 1u + d / 2u]);
      return (d & 1u) == 0u ? pair.x : pair.y;
    }
  }
#endif
  return v_at(kv_head, slot, d, kv_slots(), p.kv);
}

// q . k for an un-rotated key, rotated here at its cache-relative position
// (after dequantization, pair by pair, as rope_kv_write would have rotated it).
// Hadamard-mixed keys are dequantized whole and turned back first.
float rolling_k_dot(uint kv_head, uint slot, int sp, int open_block) {
  const float pos = float(rope_pos[kv_head * p.capacity + slot]);
  float score = 0.0;
#if K_ENC == KV_ENC_Q8 || K_ENC == KV_ENC_Q4 || K_ENC == KV_ENC_Q2_CHANNEL  // only quantized keys are mixed
  if (p.hadamard != 0u) {
    float k[KVSCOPE_ATTENTION_MAX_HEAD_DIM];
    for (uint d = 0u; d < p.head_dim; ++d) k[d] = key_at(kv_head, slot, sp, d, open_block);
    hadamard_unmix(k, p.head_dim);
    for (uint i = 0u; i < p.head_dim / 2u; ++i) {
      const uvec2 d = rope_pair_dims(i, p.rope_mode, p.rope_dim);
      const float factor = 2u * i < p.rope_dim && p.has_freq_factors != 0u ? freq_factors[i] : 1.0;
      const vec2 r = rope_rotate(vec2(k[d.x], k[d.y]), i, pos, p.rope_mode, p.rope_theta, p.rope_dim, factor, p.rope_mscale);
      score += q_scaled[d.x] * r.x + q_scaled[d.y] * r.y;
    }
    return score;
  }
#endif
  for (uint i = 0u; i < p.head_dim / 2u; ++i) {
    const uvec2 d = rope_pair_dims(i, p.rope_mode, p.rope_dim);
    const vec2 k = vec2(key_at(kv_head, slot, sp, d.x, open_block), key_at(kv_head, slot, sp, d.y, open_block));
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
#if K_ENC == KV_ENC_Q2_CHANNEL
  query_block = open_block;  // without the step's rows: the window's block
  if (p.step_rows != 0u) {
    const int own = step_slots[t * p.n_kv_head + kv_head];
    query_block = own >= 0 && uint(own) < kv_slots() ? own / int(p.kv.token_group) : -1;
  }
#endif

  // Pass 1: scores of visible slots, and their max.
  float local_max = uintBitsToFloat(0xff800000u);  // -inf
  for (uint s = tid; s < n_slots; s += WG) {
    const int sp = slot_pos[slot_base + s];
    if (!visible(sp, position)) continue;
    // A uniform branch: without rolling, the cost is one push-constant test per slot.
    const float score = p.rolling != 0u ? rolling_k_dot(kv_head, s, sp, open_block) : key_score(kv_head, s, sp, open_block);
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
        const float weight = probs[probs_base + s];
        if (weight < p.sparse_v) continue;  // sparse-V: a value this query barely weighs is not read
        acc += weight * value_at(kv_head, s, sp, d, position);
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
