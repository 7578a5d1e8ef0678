#version 450
// Per-slot attention scores for the eviction policies (kv/policy.h): sums the
// softmax rows that attention.comp left in its probs buffer over the query
// heads sharing a kv head and over the call's queries from first_query on.
// A separate pass because attention runs one workgroup per (head, token), and
// summing there would need float atomics across workgroups. One invocation
// per (slot, kv head): no reduction, no atomics.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Probs { float probs[]; };
layout(std430, binding = 1) readonly buffer SlotPositions { int slot_pos[]; };
layout(std430, binding = 2) readonly buffer QueryPositions { int query_pos[]; };
layout(std430, binding = 3) buffer Scores { float scores[]; };

layout(push_constant) uniform Push { AttentionScoresParams p; };

void main() {
  const uint slot = gl_GlobalInvocationID.x, kv_head = gl_GlobalInvocationID.y;
  if (slot >= p.capacity || kv_head >= p.n_kv_head) return;
  const uint group = p.n_head / p.n_kv_head;
  float sum = 0.0;
  if (slot < p.n_slots) {  // attention wrote rows for every slot < capacity; those >= n_slots are 0
    for (uint t = p.first_query; t < p.n_tokens; ++t)
      for (uint h = kv_head * group; h < (kv_head + 1u) * group; ++h)
        sum += probs[(t * p.n_head + h) * p.capacity + slot];
  }
  const uint i = kv_head * p.capacity + slot;
  // Accumulating: a slot written by this call (its position is at or past the
  // call's first query) scored an older token until now, so it starts over.
  const int sp = slot_pos[i];
  const bool fresh = sp < 0 || sp >= query_pos[0];
  scores[i] = (p.accumulate != 0u && !fresh) ? scores[i] + sum : sum;
}
