// The Hadamard rotation of quantized keys (kv/hadamard.h specifies it and is
// the CPU reference, bit for bit): signs, an unnormalized Walsh-Hadamard
// transform of each block of P (the largest power of two dividing head_dim),
// and for 3 <= M <= 15 blocks the reflection I - (2/M) 1 1^T across them.
// hadamard_mix_row() works on the shared kv_row (kv.glsl, KV_WRITER) with the
// whole workgroup; hadamard_unmix() on one invocation's own array.
#ifndef KVSCOPE_HADAMARD_GLSL
#define KVSCOPE_HADAMARD_GLSL

uint hadamard_pow2(uint head_dim) { return head_dim & (~head_dim + 1u); }
// 1/P, exactly (P is a power of two).
float hadamard_inverse_pow2(uint head_dim) { return uintBitsToFloat((127u - uint(findLSB(head_dim))) << 23); }

float hadamard_sign(uint d) {
  uint h = (d + 1u) * 0x9E3779B1u;
  h ^= h >> 15;
  h *= 0x2C1B3C6Du;
  h ^= h >> 12;
  return (h & 1u) != 0u ? -1.0 : 1.0;
}

// f32(2/M) for 3 <= M <= 15 (the bits kv::hadamard_reflection spells), else 0.
float hadamard_reflection(uint odd) {
  switch (odd) {
    case 3u: return uintBitsToFloat(0x3f2aaaabu);
    case 5u: return uintBitsToFloat(0x3ecccccdu);
    case 7u: return uintBitsToFloat(0x3e924925u);
    case 9u: return uintBitsToFloat(0x3e638e39u);
    case 11u: return uintBitsToFloat(0x3e3a2e8cu);
    case 13u: return uintBitsToFloat(0x3e1d89d9u);
    case 15u: return uintBitsToFloat(0x3e088889u);
    default: return 0.0;
  }
}

#ifdef KV_WRITER
// kv_row[0, head_dim) <- M_h kv_row, times `scale` (1, or 1/P for a query:
// exact). Called by the whole workgroup with kv_row complete (barrier
// before); kv_row is complete on return.
void hadamard_mix_row(uint head_dim, float scale) {
  const uint tid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint P = hadamard_pow2(head_dim), M = head_dim / P;
  for (uint d = tid; d < head_dim; d += wg) kv_row[d] *= hadamard_sign(d);
  barrier();
  for (uint h = 1u; h < P; h *= 2u) {
    for (uint u = tid; u < head_dim / 2u; u += wg) {  // butterfly u: block, then pair within it
      const uint block = u / (P / 2u), w = u % (P / 2u);
      const uint k = block * P + (w / h) * 2u * h + w % h;
      const float a = kv_row[k], b = kv_row[k + h];
      kv_row[k] = a + b;
      kv_row[k + h] = a - b;
    }
    barrier();
  }
  const float c = hadamard_reflection(M);
  if (c != 0.0) {
    for (uint j = tid; j < P; j += wg) {
      float sum = 0.0;
      for (uint i = 0u; i < M; ++i) sum += kv_row[i * P + j];
      precise float t = c * sum;
      for (uint i = 0u; i < M; ++i) {
        precise float y = kv_row[i * P + j] - t;
        kv_row[i * P + j] = y;
      }
    }
    barrier();
  }
  if (scale != 1.0) {
    for (uint d = tid; d < head_dim; d += wg) kv_row[d] *= scale;
    barrier();
  }
}
#endif

// x[0, head_dim) <- M_h^T x / P, by one invocation (rolling attention turns
// a stored key back before RoPE).
void hadamard_unmix(inout float x[KVSCOPE_ATTENTION_MAX_HEAD_DIM], uint head_dim) {
  const uint P = hadamard_pow2(head_dim), M = head_dim / P;
  const float c = hadamard_reflection(M);
  if (c != 0.0) {
    for (uint j = 0u; j < P; ++j) {
      float sum = 0.0;
      for (uint i = 0u; i < M; ++i) sum += x[i * P + j];
      precise float t = c * sum;
      for (uint i = 0u; i < M; ++i) {
        precise float y = x[i * P + j] - t;
        x[i * P + j] = y;
      }
    }
  }
  for (uint h = 1u; h < P; h *= 2u)
    for (uint block = 0u; block < head_dim; block += P)
      for (uint j = 0u; j < P; j += 2u * h)
        for (uint k = j; k < j + h; ++k) {
          const float a = x[block + k], b = x[block + k + h];
          x[block + k] = a + b;
          x[block + k + h] = a - b;
        }
  const float inv = hadamard_inverse_pow2(head_dim);
  for (uint d = 0u; d < head_dim; ++d) x[d] *= hadamard_sign(d) * inv;
}

#endif
