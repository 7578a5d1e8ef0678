#version 450
// kivi2 keys, in two phases around attention (p.phase):
//   0, before attention: quantizes every block this step completed, per
//      channel, into 2-bit codes with an f16 scale and min per (block,
//      channel). A block's rows come from the step's (rotated) keys in the
//      qkv rows, rounded to f16, and, for rows written by earlier steps, from
//      the f16 window. The window is not written: the step's queries still
//      read the earlier rows of their own block there.
//   1, after attention: the step's rows of the open block into the f16
//      window (row slot % token_group), for the next steps.
// One workgroup per kv head walks the tokens in order (a step's tokens may
// span several blocks in a prefill; the slot table fills one block before
// opening another). The CPU reference is kv::TensorImage::write and
// write_window (kv/formats.cpp); the layout and rounding are specified in
// kv/formats.h.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;

layout(std430, binding = 0) readonly buffer Qkv { float qkv[]; };
layout(std430, binding = 1) readonly buffer Slots { int slots[]; };
layout(std430, binding = 2) readonly buffer OpenBlocks { int open_blocks[]; };
layout(std430, binding = 3) coherent buffer KeyCache { uint k_cache[]; };
#define K_KIVI2
#include "kv.glsl"

layout(push_constant) uniform Push { KiviKeyWriteParams p; };

shared uint channel_params[KVSCOPE_ATTENTION_MAX_HEAD_DIM];  // scale | min << 16
shared int row_token[KVSCOPE_KIVI_MAX_TOKEN_GROUP];          // the step's token of each row of the block, -1: none

float f16_round(float x) { return unpackHalf2x16(packHalf2x16(vec2(x, 0.0))).x; }

// Element d of row `row` of the block being sealed: the step's key, else the window's.
float row_at(uint window, uint kv_head, uint row, uint d) {
  const int t = row_token[row];
  if (t >= 0) return f16_round(qkv[uint(t) * p.qkv_stride + p.k_offset + kv_head * p.head_dim + d]);
  const vec2 pair = unpackHalf2x16(k_cache[window + row * (p.head_dim / 2u) + d / 2u]);
  return (d & 1u) == 0u ? pair.x : pair.y;
}

void main() {
  const uint tid = gl_LocalInvocationID.x, kv_head = gl_WorkGroupID.x;
  if (kv_head >= p.n_kv_head) return;
  const KvLayout L = p.kv;
  const uint T = L.token_group, half_dim = p.head_dim / 2u;
  const uint window = L.k_recent_offset + kv_head * min(T, p.capacity) * half_dim;
  const int open_block = open_blocks[kv_head];

  if (p.phase == 1u) {
    for (uint t = 0u; t < p.n_tokens; ++t) {
      const int slot = slots[t * p.n_kv_head + kv_head];
      if (slot < 0 || uint(slot) >= p.capacity || int(uint(slot) / T) != open_block) continue;
      const uint src = t * p.qkv_stride + p.k_offset + kv_head * p.head_dim, row = uint(slot) % T;
      for (uint i = tid; i < half_dim; i += WG)
        k_cache[window + row * half_dim + i] = packHalf2x16(vec2(qkv[src + 2u * i], qkv[src + 2u * i + 1u]));
    }
    return;
  }

  for (uint r = tid; r < T; r += WG) row_token[r] = -1;
  barrier();
  for (uint t = 0u; t < p.n_tokens; ++t) {  // uniform: every invocation walks every token
    const int slot = slots[t * p.n_kv_head + kv_head];
    if (slot < 0 || uint(slot) >= p.capacity) continue;
    const uint block = uint(slot) / T;
    if (tid == 0u) row_token[uint(slot) % T] = int(t);

    // A block's tokens are consecutive here; after its last one, a block
    // that is not the open one is complete.
    const int next = t + 1u < p.n_tokens ? slots[(t + 1u) * p.n_kv_head + kv_head] : -1;
    const bool last_of_block = next < 0 || uint(next) / T != block;
    if (!last_of_block) continue;
    barrier();
    if (int(block) != open_block) {
      const uint rows = min(T, p.capacity - block * T);
      const uint params = L.k_params_offset + (kv_head * L.k_blocks + block) * p.head_dim;
      for (uint d = tid; d < p.head_dim; d += WG) {
        float lo = row_at(window, kv_head, 0u, d), hi = lo;
        for (uint r = 1u; r < rows; ++r) {
          const float x = row_at(window, kv_head, r, d);
          lo = min(lo, x);
          hi = max(hi, x);
        }
        const uint min_bits = kv_f16_min_floor(max(lo, -65504.0));
        const uint scale_bits = kv_f16_scale_ceil((hi - kv_f16_value(min_bits)) * kv_inverse_levels(3u));
        channel_params[d] = scale_bits | (min_bits << 16);
        k_cache[params + d] = channel_params[d];
      }
      barrier();
      const uint code_words = L.k_code_words;
      for (uint w = tid; w < rows * code_words; w += WG) {
        const uint r = w / code_words, first = (w % code_words) * 16u;
        uint word = 0u;
        for (uint d = first; d < min(first + 16u, p.head_dim); ++d) {
          const uint cp = channel_params[d];
          const uint code =
              kv_round_quotient(row_at(window, kv_head, r, d) - kv_f16_value(cp >> 16), kv_f16_value(cp), 3u);
          word |= code << (2u * (d - first));
        }
        k_cache[(kv_head * p.capacity + block * T + r) * code_words + w % code_words] = word;
      }
      barrier();
    }
    for (uint r = tid; r < T; r += WG) row_token[r] = -1;  // the next block's rows start over
    barrier();
  }
}
