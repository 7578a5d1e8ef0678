// KV cache bindings, quantize-on-write and dequantize-on-read for every
// storage format. The word layout of each format and its rounding rules are
// specified in kv/formats.h (the CPU reference these functions mirror bit for
// bit); the host passes the layout as a KvLayout (params.h).
//
// The including shader defines:
//   K_BINDING, V_BINDING   the bindings of the key and value caches
//   one of K_F32 K_F16 K_Q8 K_Q4 K_KIVI2 and one of V_F32 V_F16 V_Q8 V_Q4 V_KIVI2
//                          (shaders/shaders.cmake)
//   KV_WRITER              for rope_kv_write: kv_encode_row() and the stores
//   KV_READER              for attention: k_dot(), k_at() and v_at(); before including,
//                          it declares `shared float q_scaled[]` (the query)
//                          and `shared float q_group_sum[]` (its sums per group)
// The caches are uint arrays (no 8/16-bit storage features needed; f32 via
// floatBitsToUint).
#ifndef KVSCOPE_KV_GLSL
#define KVSCOPE_KV_GLSL

// Encodings (kv::Encoding). kivi2 keys (per channel, with an f16 window) are
// written by kivi_key_write.comp; rope_kv_write leaves them rotated in the
// qkv row for it.
#define KV_ENC_F32 0
#define KV_ENC_F16 1
#define KV_ENC_Q8 2
#define KV_ENC_Q4 3
#define KV_ENC_Q2 4
#define KV_ENC_Q2_CHANNEL 5

#if defined(K_F32)
#define K_ENC KV_ENC_F32
#elif defined(K_F16)
#define K_ENC KV_ENC_F16
#elif defined(K_Q8)
#define K_ENC KV_ENC_Q8
#elif defined(K_Q4)
#define K_ENC KV_ENC_Q4
#elif defined(K_KIVI2)
#define K_ENC KV_ENC_Q2_CHANNEL
#endif
#if defined(V_F32)
#define V_ENC KV_ENC_F32
#elif defined(V_F16)
#define V_ENC KV_ENC_F16
#elif defined(V_Q8)
#define V_ENC KV_ENC_Q8
#elif defined(V_Q4)
#define V_ENC KV_ENC_Q4
#elif defined(V_KIVI2)
#define V_ENC KV_ENC_Q2
#endif

// ------------------------------------------------------------ exact helpers
// Mirrors of kv::f16_scale_ceil, kv::f16_min_floor and kv::round_quotient:
// integer arithmetic and exact products only, so every device agrees.

uint kv_f16_scale_ceil(float x) {
  x = clamp(x, 6.103515625e-05, 65504.0);
  const uint b = floatBitsToUint(x);
  uint h = (((b >> 23) - 112u) << 10) | ((b >> 13) & 0x3ffu);
  if ((b & 0x1fffu) != 0u) h += 1u;
  return h;
}

uint kv_f16_min_floor(float x) {
  if (x >= 6.103515625e-05) {
    const uint b = floatBitsToUint(min(x, 65504.0));
    return (((b >> 23) - 112u) << 10) | ((b >> 13) & 0x3ffu);
  }
  if (x >= 0.0) return 0u;
  return 0x8000u | kv_f16_scale_ceil(-x);
}

// An f16 that is zero or normal, as f32 (exact).
float kv_f16_value(uint h) { return unpackHalf2x16(h & 0xffffu).x; }

uint kv_round_quotient(float d, float s, uint max_code) {
  if (!(d > 0.0)) return 0u;
  const float guess = floor(d / s + 0.5);  // within one of the answer
  uint n = guess >= float(max_code) ? max_code : uint(guess);
  precise const float below = (float(n) - 0.5) * s;  // exact products
  precise const float above = (float(n) + 0.5) * s;
  if (n > 0u && d < below) n -= 1u;
  else if (n < max_code && d >= above) n += 1u;
  return n;
}

uint kv_code_bits(uint enc) { return enc == KV_ENC_Q8 ? 8u : enc == KV_ENC_Q4 ? 4u : 2u; }
uint kv_levels(uint enc) { return enc == KV_ENC_Q4 ? 15u : 3u; }
// f32(1/L), the exact constants of kv/formats.cpp
float kv_inverse_levels(uint levels) {
  return levels == 15u ? 0.066666670143604278564453125 : 0.3333333432674407958984375;
}
const float kv_inv127 = 0.007874015718698501586914062500;

// --------------------------------------------------------------- writers
#ifdef KV_WRITER

layout(std430, binding = K_BINDING) writeonly buffer KeyCache { uint k_cache[]; };
layout(std430, binding = V_BINDING) writeonly buffer ValueCache { uint v_cache[]; };

// One row being encoded: the input, then its words (codes then params).
shared float kv_row[KVSCOPE_ATTENTION_MAX_HEAD_DIM];
shared uint kv_words[KVSCOPE_ATTENTION_MAX_HEAD_DIM + KVSCOPE_ATTENTION_MAX_HEAD_DIM / 2];
shared uint kv_params[KVSCOPE_ATTENTION_MAX_HEAD_DIM];  // per group: scale | min << 16 (q8: scale)

// Encodes kv_row[0, head_dim) into kv_words[0, code_words + param words) in
// encoding `enc` (uniform; a compile-time constant at every call). Called by
// the whole workgroup; kv_row must be complete (barrier before), kv_words is
// complete on return.
void kv_encode_row(uint enc, uint head_dim, uint group_size, uint code_words) {
  const uint tid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  if (enc == KV_ENC_F32) {
    for (uint d = tid; d < head_dim; d += wg) kv_words[d] = floatBitsToUint(kv_row[d]);
  } else if (enc == KV_ENC_F16) {
    for (uint i = tid; i < head_dim / 2u; i += wg) kv_words[i] = packHalf2x16(vec2(kv_row[2u * i], kv_row[2u * i + 1u]));
  } else {
    const uint n_groups = head_dim / group_size;
    // Group parameters, one invocation per group.
    for (uint g = tid; g < n_groups; g += wg) {
      const uint first = g * group_size;
      if (enc == KV_ENC_Q8) {
        float amax = 0.0;
        for (uint i = 0u; i < group_size; ++i) amax = max(amax, abs(kv_row[first + i]));
        kv_params[g] = kv_f16_scale_ceil(amax * kv_inv127);
      } else {
        float lo = kv_row[first], hi = kv_row[first];
        for (uint i = 1u; i < group_size; ++i) {
          lo = min(lo, kv_row[first + i]);
          hi = max(hi, kv_row[first + i]);
        }
        const uint min_bits = kv_f16_min_floor(max(lo, -65504.0));
        const uint scale_bits = kv_f16_scale_ceil((hi - kv_f16_value(min_bits)) * kv_inverse_levels(kv_levels(enc)));
        kv_params[g] = scale_bits | (min_bits << 16);
      }
    }
    barrier();
    // Code words, one invocation per word (a word may span groups).
    const uint bits = kv_code_bits(enc), per_word = 32u / bits;
    for (uint w = tid; w < code_words; w += wg) {
      uint word = 0u;
      for (uint j = 0u; j < per_word; ++j) {
        const uint d = w * per_word + j;
        if (d >= head_dim) break;
        const uint params = kv_params[d / group_size];
        const float scale = kv_f16_value(params);
        uint code;
        if (enc == KV_ENC_Q8) {
          const float x = kv_row[d];
          const uint magnitude = kv_round_quotient(abs(x), scale, 127u);
          code = uint(x < 0.0 ? -int(magnitude) : int(magnitude)) & 0xffu;
        } else {
          code = kv_round_quotient(kv_row[d] - kv_f16_value(params >> 16), scale, kv_levels(enc));
        }
        word |= code << (j * bits);
      }
      kv_words[w] = word;
    }
    // Parameter words after the codes.
    if (enc == KV_ENC_Q8) {
      for (uint w = tid; w < (n_groups + 1u) / 2u; w += wg) {
        const uint hi_half = 2u * w + 1u < n_groups ? kv_params[2u * w + 1u] : 0u;
        kv_words[code_words + w] = kv_params[2u * w] | (hi_half << 16);
      }
    } else {
      for (uint g = tid; g < n_groups; g += wg) kv_words[code_words + g] = kv_params[g];
    }
  }
  barrier();
}

#endif  // KV_WRITER

// --------------------------------------------------------------- readers
#ifdef KV_READER

layout(std430, binding = K_BINDING) readonly buffer KeyCache { uint k_cache[]; };
layout(std430, binding = V_BINDING) readonly buffer ValueCache { uint v_cache[]; };

// q . k for the key in (kv_head, slot), the query in shared q_scaled.
// `open_block`: the head's open block (kivi2 keys read it from the f16 window).
float k_dot(uint kv_head, uint slot, uint capacity, uint head_dim, KvLayout L, int open_block) {
  float score = 0.0;
#if K_ENC == KV_ENC_Q2_CHANNEL
  const uint block = slot / L.token_group;
  if (int(block) == open_block) {
    const uint recent_rows = min(L.token_group, capacity);
    const uint base = L.k_recent_offset + (kv_head * recent_rows + slot % L.token_group) * (head_dim / 2u);
    for (uint i = 0u; i < head_dim / 2u; ++i)
      score += dot(vec2(q_scaled[2u * i], q_scaled[2u * i + 1u]), unpackHalf2x16(k_cache[base + i]));
    return score;
  }
  const uint codes = (kv_head * capacity + slot) * L.k_code_words;
  const uint params = L.k_params_offset + (kv_head * L.k_blocks + block) * head_dim;
  for (uint w = 0u; w < L.k_code_words; ++w) {
    const uint word = k_cache[codes + w];
    const uint end = min(head_dim, 16u * w + 16u);
    for (uint d = 16u * w; d < end; ++d) {
      const uint p = k_cache[params + d];
      const float k = float((word >> (2u * (d % 16u))) & 3u) * kv_f16_value(p) + kv_f16_value(p >> 16);
      score += q_scaled[d] * k;
    }
  }
#else
  const uint row = (kv_head * capacity + slot) * L.k_row_words;
#if K_ENC == KV_ENC_F32
  for (uint d = 0u; d < head_dim; ++d) score += q_scaled[d] * uintBitsToFloat(k_cache[row + d]);
#elif K_ENC == KV_ENC_F16
  for (uint i = 0u; i < head_dim / 2u; ++i)
    score += dot(vec2(q_scaled[2u * i], q_scaled[2u * i + 1u]), unpackHalf2x16(k_cache[row + i]));
#elif K_ENC == KV_ENC_Q8
  // sum over groups of scale * (q . codes)
  const uint G = L.group_size;
  for (uint g = 0u; g < head_dim / G; ++g) {
    float acc = 0.0;
    for (uint d = g * G; d < g * G + G; ++d)
      acc += q_scaled[d] * float(bitfieldExtract(int(k_cache[row + d / 4u]), int(8u * (d % 4u)), 8));
    const uint p = k_cache[row + L.k_code_words + g / 2u] >> (16u * (g % 2u));
    score += acc * kv_f16_value(p);
  }
#else
  // q4 / 2-bit: sum over groups of scale * (q . codes) + min * sum(q)
  const uint G = L.group_size, bits = kv_code_bits(K_ENC), per_word = 32u / bits, mask = (1u << bits) - 1u;
  for (uint g = 0u; g < head_dim / G; ++g) {
    float acc = 0.0;
    for (uint d = g * G; d < g * G + G; ++d)
      acc += q_scaled[d] * float((k_cache[row + d / per_word] >> (bits * (d % per_word))) & mask);
    const uint p = k_cache[row + L.k_code_words + g];
    score += acc * kv_f16_value(p) + q_group_sum[g] * kv_f16_value(p >> 16);
  }
#endif
#endif
  return score;
}

// Element d of the key in (kv_head, slot), dequantized: for rolling
// attention, which rotates keys after reading them (k_dot cannot: it folds
// the query into the sum before any element is whole).
float k_at(uint kv_head, uint slot, uint d, uint capacity, uint head_dim, KvLayout L, int open_block) {
#if K_ENC == KV_ENC_Q2_CHANNEL
  const uint block = slot / L.token_group;
  if (int(block) == open_block) {
    const uint recent_rows = min(L.token_group, capacity);
    const uint base = L.k_recent_offset + (kv_head * recent_rows + slot % L.token_group) * (head_dim / 2u);
    const vec2 pair = unpackHalf2x16(k_cache[base + d / 2u]);
    return (d & 1u) == 0u ? pair.x : pair.y;
  }
  const uint word = k_cache[(kv_head * capacity + slot) * L.k_code_words + d / 16u];
  const uint p = k_cache[L.k_params_offset + (kv_head * L.k_blocks + block) * head_dim + d];
  return float((word >> (2u * (d % 16u))) & 3u) * kv_f16_value(p) + kv_f16_value(p >> 16);
#else
  const uint row = (kv_head * capacity + slot) * L.k_row_words;
#if K_ENC == KV_ENC_F32
  return uintBitsToFloat(k_cache[row + d]);
#elif K_ENC == KV_ENC_F16
  const vec2 pair = unpackHalf2x16(k_cache[row + d / 2u]);
  return (d & 1u) == 0u ? pair.x : pair.y;
#elif K_ENC == KV_ENC_Q8
  const uint g = d / L.group_size;
  const float scale = kv_f16_value(k_cache[row + L.k_code_words + g / 2u] >> (16u * (g % 2u)));
  return float(bitfieldExtract(int(k_cache[row + d / 4u]), int(8u * (d % 4u)), 8)) * scale;
#else
  const uint bits = kv_code_bits(K_ENC), per_word = 32u / bits;
  const uint p = k_cache[row + L.k_code_words + d / L.group_size];
  const uint code = (k_cache[row + d / per_word] >> (bits * (d % per_word))) & ((1u << bits) - 1u);
  return float(code) * kv_f16_value(p) + kv_f16_value(p >> 16);
#endif
#endif
}

// Element d of the value in (kv_head, slot).
float v_at(uint kv_head, uint slot, uint d, uint capacity, KvLayout L) {
  const uint row = (kv_head * capacity + slot) * L.v_row_words;
#if V_ENC == KV_ENC_F32
  return uintBitsToFloat(v_cache[row + d]);
#elif V_ENC == KV_ENC_F16
  const vec2 pair = unpackHalf2x16(v_cache[row + d / 2u]);
  return (d & 1u) == 0u ? pair.x : pair.y;
#elif V_ENC == KV_ENC_Q8
  const uint g = d / L.group_size;
  const float scale = kv_f16_value(v_cache[row + L.v_code_words + g / 2u] >> (16u * (g % 2u)));
  return float(bitfieldExtract(int(v_cache[row + d / 4u]), int(8u * (d % 4u)), 8)) * scale;
#else
  const uint bits = kv_code_bits(V_ENC), per_word = 32u / bits;
  const uint p = v_cache[row + L.v_code_words + d / L.group_size];
  const uint code = (v_cache[row + d / per_word] >> (bits * (d % per_word))) & ((1u << bits) - 1u);
  return float(code) * kv_f16_value(p) + kv_f16_value(p >> 16);
#endif
}

#endif  // KV_READER

#endif
