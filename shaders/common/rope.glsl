// Rotary position embedding (RoPE), shared by every shader that rotates head
// vectors: rope_kv_write (q in place, k on its way to the cache) and any
// shader that rotates keys later (keys stored un-rotated).
// reference::rope (models/reference_ops.cpp) is the CPU mirror of these.
//
// A head of head_dim floats is rotated as head_dim / 2 pairs. Pair i turns by
//   angle = pos * theta^(-2i / rope_dim) / freq_factor[i]
// for i < rope_dim / 2; pairs i >= rope_dim / 2 are left alone.
// Which two dims form pair i depends on the architecture's mode:
//   ROPE_MODE_NORMAL (llama): dims (2i, 2i+1)
//   ROPE_MODE_NEOX   (qwen2, GPT-NeoX): dims (i, i + rope_dim/2)
// The unrotated pairs i >= rope_dim/2 are (2i, 2i+1) in both modes, so the
// pairs cover the head's dims exactly once either way.
// freq_factor is 1 except for Llama 3's rope_freqs.weight (one divisor per
// pair, applied the way llama.cpp applies it). mscale multiplies the rotated
// pair (ggml's attn_factor: Phi-3.5's LongRoPE scale; 1 elsewhere).
#ifndef KVSCOPE_ROPE_GLSL
#define KVSCOPE_ROPE_GLSL

#define ROPE_MODE_NORMAL 0u
#define ROPE_MODE_NEOX 1u

// The dims of a head that pair i rotates together (x, y of rope_rotate).
uvec2 rope_pair_dims(uint i, uint mode, uint rope_dim) {
  if (mode == ROPE_MODE_NEOX && 2u * i < rope_dim) return uvec2(i, i + rope_dim / 2u);
  return uvec2(2u * i, 2u * i + 1u);
}

// The pair v = (head[x], head[y]) of pair index i at position pos, rotated.
// The angle does not depend on the mode (only which dims pair up does); mode
// is taken so that every caller states which one it uses.
vec2 rope_rotate(vec2 v, uint i, float pos, uint mode, float theta, uint rope_dim, float freq_factor, float mscale) {
  if (2u * i >= rope_dim) return v;
  const float angle = pos * pow(theta, -float(2u * i) / float(rope_dim)) / freq_factor;
  const float c = cos(angle) * mscale, s = sin(angle) * mscale;
  return vec2(v.x * c - v.y * s, v.x * s + v.y * c);
}

#endif
