// Push-constant structs shared by the GLSL shaders and C++ (one declaration).
// Each comment lists the shader's storage-buffer bindings (set 0) in order.
// Specialization constant 0 is always the workgroup size (local_size_x_id = 0),
// chosen on the host from the device's subgroup size.
//
// Weight layout on the GPU (models/gpu_layout.h repacks GGUF blocks into it):
//   binding W ("values"): F32  float[rows*cols]
//                         F16  halves, two per uint (element e in the low half
//                              of word e/2 when e is even)
//                         Q8_0 int8 quants, four per uint (element e in byte e%4
//                              of word e/4, little-endian)
//                         Q4_0 4-bit quants, eight per uint: for block b and its
//                              16 bytes as ggml stores them (element j in the low
//                              nibble of byte j, element j+16 in the high
//                              nibble), byte k of the block is byte (b*16+k)
//   binding S ("scales"): Q8_0/Q4_0 one f16 scale per block of 32, two per uint;
//                         F32/F16 unused (bind any buffer).
//   A tensor is rows x cols with cols contiguous (GGUF ne[0] = cols).
//   Large tensors are bound in chunks of rows: `row_offset` is the first row
//   of the chunk within the tensor's output indexing; the W/S bindings start at
//   that chunk.
#ifndef KVSCOPE_PARAMS_H
#define KVSCOPE_PARAMS_H

#ifdef __cplusplus
#include <cstdint>
namespace kvscope::params {
using uint = uint32_t;
#endif

// embed: 0 token ids int[n_tokens], 1 W [n_vocab][dim], 2 S, 3 out f32[n_tokens][dim]
// groups: (n_tokens)
struct EmbedParams {
  uint n_tokens;
  uint dim;
  uint n_vocab;   // ids outside [0, n_vocab) produce a row of zeros
  uint row_offset;
};

// rmsnorm: 0 x f32[n_rows][n], 1 weight f32[n], 2 out f32[n_rows][n]
// out = x / sqrt(mean(x^2) + eps) * weight. groups: (n_rows)
struct RmsNormParams {
  uint n_rows;
  uint n;
  float eps;
};

// matvec (decode): 0 W [rows][cols], 1 S, 2 x f32[n_vec][cols], 3 y f32[n_vec][y_stride]
// y[v][row_offset + r] (+)= sum_k W[r][k] * x[v][k] for r < rows.
// accumulate = 1 adds into y (fused residual), 0 overwrites.
struct MatVecParams {
  uint rows;
  uint cols;
  uint n_vec;
  uint y_stride;
  uint row_offset;
  uint accumulate;
};

// matmul (prefill, tiled): same bindings as matvec; X is [n_tokens][cols],
// Y is [n_tokens][y_stride]; Y[t][row_offset + r] (+)= sum_k W[r][k] X[t][k].
struct MatMulParams {
  uint rows;
  uint cols;
  uint n_tokens;
  uint y_stride;
  uint row_offset;
  uint accumulate;
};

// rope (adjacent pairs, llama "normal" mode): 0 q f32[n_tokens][n_head_q*head_dim],
// 1 k f32[n_tokens][n_head_k*head_dim], 2 positions int[n_tokens]
// pair (2i, 2i+1) of each head, i < rope_dim/2, rotated by
// pos * theta^(-2i/rope_dim). In place.
struct RopeParams {
  uint n_tokens;
  uint n_head_q;
  uint n_head_k;
  uint head_dim;
  uint rope_dim;
  float theta;
};

// kv_write: 0 k f32[n_tokens][n_kv_head*head_dim], 1 v f32[same],
// 2 slots int[n_tokens][n_kv_head] (slot of the token in that head's table;
// <0: skip), 3 K cache, 4 V cache. Cache layout [n_kv_head][capacity][head_dim]
// in the KV_* format (F32: float; F16: halves two per uint, head_dim even).
struct KvWriteParams {
  uint n_tokens;
  uint n_kv_head;
  uint head_dim;
  uint capacity;
};

// attention: 0 q f32[n_tokens][n_head*head_dim], 1 K cache, 2 V cache,
// 3 slot positions int[n_kv_head][capacity] (token position held by each slot,
// -1: empty), 4 query positions int[n_tokens], 5 out f32[n_tokens][n_head*head_dim],
// 6 probs f32[n_tokens][n_head][capacity] (softmax row over slots; 0 for
// masked slots — doubles as the attention probe).
// Query head h reads kv head h / (n_head / n_kv_head). Slot s is visible to a
// query at position p when 0 <= slot_pos[s] <= p. Only slots < n_slots are
// scanned. scale = 1/sqrt(head_dim). groups: (n_head, n_tokens)
struct AttentionParams {
  uint n_tokens;
  uint n_head;
  uint n_kv_head;
  uint head_dim;
  uint capacity;
  uint n_slots;
  float scale;
};

// swiglu: 0 gate f32[n], 1 up f32[n], 2 out f32[n]; out = gate*sigmoid(gate)*up
struct SwigluParams {
  uint n;
};

// add: 0 a f32[n], 1 b f32[n], 2 out f32[n]; out = a + b
struct AddParams {
  uint n;
};

#ifdef __cplusplus
}  // namespace kvscope::params
static_assert(sizeof(kvscope::params::AttentionParams) <= 128);
static_assert(sizeof(kvscope::params::MatMulParams) <= 128);
#endif
#endif
