#version 450
// Matrix-matrix product for prefill: Y[t][row_offset + r] (+)= W[r] . X[t].
// Each workgroup computes a tile of TILE_ROWS rows x TILE_TOKENS tokens; the K
// dimension is walked in steps of 32 (one quant block): the W block is
// dequantized into shared memory once and used by every token of the tile,
// the X block likewise, and each invocation keeps a 4 x 4 register block of
// outputs (rows tr + 8i, tokens tc + (wg/8) j).
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
// 1: one whole row per invocation (CPU devices; see main_row_per_invocation).
layout(constant_id = 1) const uint ROW_PER_INVOCATION = 0;

const uint TILE_ROWS = KVSCOPE_MATMUL_TILE_ROWS;  // 32
const uint TILE_TOKENS = WG / 2u;                 // (32 / 4) * (TILE_TOKENS / 4) == WG
const uint TILE_K = 32u;
const uint ROW_THREADS = TILE_ROWS / 4u;          // 8 invocations across rows
const uint TOKEN_THREADS = WG / ROW_THREADS;      // == TILE_TOKENS / 4

#define W_BINDING 0
#define S_BINDING 1
#include "weights.glsl"
layout(std430, binding = 2) readonly buffer X { float x[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

layout(push_constant) uniform Push { MatMulParams p; };

shared float w_tile[TILE_ROWS * TILE_K];   // [row][k]
shared float x_tile[TILE_TOKENS * TILE_K]; // [token][k]

// Units (words of quants, or single floats) that make up one row's 32-column
// block, and how many elements each holds.
#if defined(WTYPE_F32)
const uint UNITS_PER_BLOCK = 32u;
#elif defined(WTYPE_F16) || defined(WTYPE_BF16)
const uint UNITS_PER_BLOCK = 16u;
#elif defined(WTYPE_Q8_0) || defined(W_KQUANT) || defined(W_QUADS)
const uint UNITS_PER_BLOCK = 8u;  // K-quants, Q4_1, Q5_0, Q5_1, IQ4_NL: quads (w_quad)
#else
const uint UNITS_PER_BLOCK = 4u;
#endif

// Dequantizes unit `u` of block `block` of `row` into w_tile row `tile_row`.
// Columns past `cols` (F32/F16 tails) become 0.
void load_w_unit(uint tile_row, uint row, uint block, uint u) {
  const uint cols = p.cols;
  const uint row_base = row * w_row_words(cols);
  const uint dst = tile_row * TILE_K;
#if defined(WTYPE_F32)
  const uint c = block * 32u + u;
  w_tile[dst + u] = c < cols ? uintBitsToFloat(w_word(row_base + c)) : 0.0;
#elif defined(WTYPE_F16) || defined(WTYPE_BF16)
  const uint c = block * 32u + 2u * u;
  const vec2 pair = c < cols ? w_pair(w_word(row_base + block * 16u + u)) : vec2(0.0);
  w_tile[dst + 2u * u] = pair.x;
  w_tile[dst + 2u * u + 1u] = pair.y;  // a padding half is 0
#elif defined(WTYPE_Q8_0)
  const vec4 q = w_scale(row, block, cols) * q8_unpack(w_word(row_base + block * 8u + u));
  w_tile[dst + 4u * u] = q.x;
  w_tile[dst + 4u * u + 1u] = q.y;
  w_tile[dst + 4u * u + 2u] = q.z;
  w_tile[dst + 4u * u + 3u] = q.w;
#elif defined(W_KQUANT) || defined(W_QUADS)
  const vec4 q = w_quad(row, block * 32u + 4u * u, cols);  // cols % block == 0: no tail
  for (uint i = 0u; i < 4u; ++i) w_tile[dst + 4u * u + i] = q[i];
#else
  vec4 low, high;
  q4_unpack(w_word(row_base + block * 4u + u), low, high);
  const float d = w_scale(row, block, cols);
  low *= d;
  high *= d;
  for (uint i = 0u; i < 4u; ++i) {
    w_tile[dst + 4u * u + i] = low[i];
    w_tile[dst + 16u + 4u * u + i] = high[i];
  }
#endif
}

// ---- One whole row per invocation, KVSCOPE_MATMUL_CPU_TOKENS tokens at once --
// On CPU devices (lavapipe) invocations are SIMD lanes and shared memory is
// ordinary memory: the tiles above cost a gather per read. Here each lane
// owns a row, reads its weights 16 bytes per load, and uses every dequantized
// quad of weights for a block of tokens whose x reads are the same address in
// every lane (uniform loads). groups: (ceil(rows / wg), ceil(n_tokens / 8)).
const uint CPU_TOKENS = KVSCOPE_MATMUL_CPU_TOKENS;

// x as vec4 (only when cols % 4 == 0: rows of x are then 16-byte aligned).
layout(std430, binding = 2) readonly buffer X4 { vec4 x_vec4[]; };

float token_acc[CPU_TOKENS];

// token_acc[t] += w . x[token0 + t][col .. col + 3]. Tokens past the end
// (t >= n_tok) repeat the last token instead of branching (no branch in the
// hot loop; their sums are never written).
void add_quad(vec4 w, uint col, uint token0, uint n_tok) {
  for (uint t = 0u; t < CPU_TOKENS; ++t) {
    token_acc[t] += dot(w, x_vec4[((token0 + min(t, n_tok - 1u)) * p.cols + col) / 4u]);
  }
}

void add_scalar_row(uint row, uint token0, uint n_tok) {  // odd F32/F16 shapes
  for (uint c = 0u; c < p.cols; ++c) {
    const float w = w_element(row, c, p.cols);
    for (uint t = 0u; t < CPU_TOKENS; ++t) {
      if (t < n_tok) token_acc[t] += w * x[(token0 + t) * p.cols + c];
    }
  }
}

void main_row_per_invocation() {
  const uint row = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x;
  const uint token0 = gl_WorkGroupID.y * CPU_TOKENS;
  if (row >= p.rows || token0 >= p.n_tokens) return;  // no barriers on this path
  const uint n_tok = min(CPU_TOKENS, p.n_tokens - token0);
  for (uint t = 0u; t < CPU_TOKENS; ++t) token_acc[t] = 0.0;
  const uint cols = p.cols;
  const uint row4 = row * w_row_texels(cols);  // rows start on a texel
#if defined(WTYPE_F32)
  if (cols % 4u == 0u) {
    for (uint i = 0u; i < cols / 4u; ++i) add_quad(uintBitsToFloat(w_texel(row4 + i)), 4u * i, token0, n_tok);
  } else {
    add_scalar_row(row, token0, n_tok);
  }
#elif defined(WTYPE_F16) || defined(WTYPE_BF16)
  if (cols % 8u == 0u) {
    for (uint i = 0u; i < cols / 8u; ++i) {
      const uvec4 words = w_texel(row4 + i);
      add_quad(vec4(w_pair(words.x), w_pair(words.y)), 8u * i, token0, n_tok);
      add_quad(vec4(w_pair(words.z), w_pair(words.w)), 8u * i + 4u, token0, n_tok);
    }
  } else {
    add_scalar_row(row, token0, n_tok);
  }
#elif defined(WTYPE_Q8_0)
  for (uint b = 0u; b < cols / W_BLOCK; ++b) {
    const float d = w_scale(row, b, cols);
    for (uint h = 0u; h < 2u; ++h) {
      const uvec4 words = w_texel(row4 + 2u * b + h);
      for (uint i = 0u; i < 4u; ++i) add_quad(d * q8_unpack(words[i]), 32u * b + 16u * h + 4u * i, token0, n_tok);
    }
  }
#elif defined(W_QUADS_256)
  for (uint i = 0u; i < cols / 4u; ++i) add_quad(w_quad(row, 4u * i, cols), 4u * i, token0, n_tok);
#elif defined(W_QUADS)
  for (uint b = 0u; b < cols / 32u; ++b) {
    vec4 lo[4], hi[4];
    w_block32(row, b, cols, lo, hi);
    for (uint i = 0u; i < 4u; ++i) {
      add_quad(lo[i], 32u * b + 4u * i, token0, n_tok);
      add_quad(hi[i], 32u * b + 16u + 4u * i, token0, n_tok);
    }
  }
#elif defined(WTYPE_Q6_K)
  // Each quad of weights is dequantized once and used for every token, as it
  // is decoded (no array of a whole group: measured faster on lavapipe).
  for (uint b = 0u; b < cols / W_BLOCK; ++b) {
    const uint T = row4 + b * KQ_BLOCK_TEXELS;
    const float d = w_scale(row, b, cols);
    for (uint g = 0u; g < 4u; ++g) {
      const vec4 scales = d * kq_group_scales(T, g);
      uvec4 first[2], second[2], qh[2];
      kq_group_texels6(T, g, first, second, qh);
      const uint shift = 4u * (g & 1u), col = b * W_BLOCK + 64u * g;
      for (uint t = 0u; t < 2u; ++t) {
        for (uint i = 0u; i < 4u; ++i) {
          add_quad(scales[t] * kq_codes6(first[t][i], qh[t][i], g, shift), col + 16u * t + 4u * i, token0, n_tok);
          add_quad(scales[2u + t] * kq_codes6(second[t][i], qh[t][i], g, shift + 2u), col + 32u + 16u * t + 4u * i,
                   token0, n_tok);
        }
      }
    }
  }
#elif defined(W_KQUANT)
  for (uint b = 0u; b < cols / W_BLOCK; ++b) {
    const uint T = row4 + b * KQ_BLOCK_TEXELS;
    vec2 d_dmin;
    uvec4 sm;
    kq_header(w_texel(T), d_dmin, sm);
    for (uint g = 0u; g < 4u; ++g) {
      const vec2 a = kq_step_offset(d_dmin, sm, 2u * g), c = kq_step_offset(d_dmin, sm, 2u * g + 1u);
      uvec4 qs[2], qh[2];
      kq_group_texels(T, g, qs, qh);
      const uint col = b * W_BLOCK + 64u * g;
      for (uint t = 0u; t < 2u; ++t) {
        for (uint i = 0u; i < 4u; ++i) {
          vec4 low, high;
          kq_codes(qs[t][i], qh[t][i], g, low, high);
          add_quad(a.x * low - a.y, col + 16u * t + 4u * i, token0, n_tok);
          add_quad(c.x * high - c.y, col + 32u + 16u * t + 4u * i, token0, n_tok);
        }
      }
    }
  }
#else
  for (uint b = 0u; b < cols / W_BLOCK; ++b) {
    const float d = w_scale(row, b, cols);
    const uvec4 words = w_texel(row4 + b);
    for (uint i = 0u; i < 4u; ++i) {
      vec4 low, high;
      q4_unpack(words[i], low, high);
      add_quad(d * low, 32u * b + 4u * i, token0, n_tok);
      add_quad(d * high, 32u * b + 16u + 4u * i, token0, n_tok);
    }
  }
#endif
  for (uint t = 0u; t < n_tok; ++t) {
    const uint out_index = (token0 + t) * p.y_stride + p.row_offset + row;
    y[out_index] = p.accumulate != 0u ? y[out_index] + token_acc[t] : token_acc[t];
  }
}

void main() {
  if (ROW_PER_INVOCATION != 0u) {  // a specialization constant: uniform, and folded away
    main_row_per_invocation();
    return;
  }
  const uint tid = gl_LocalInvocationID.x;
  const uint row0 = gl_WorkGroupID.x * TILE_ROWS;
  const uint token0 = gl_WorkGroupID.y * TILE_TOKENS;
  const uint tr = tid % ROW_THREADS, tc = tid / ROW_THREADS;

  float acc[4][4];
  for (uint i = 0u; i < 4u; ++i)
    for (uint j = 0u; j < 4u; ++j) acc[i][j] = 0.0;

  const uint n_blocks = (p.cols + TILE_K - 1u) / TILE_K;
  for (uint block = 0u; block < n_blocks; ++block) {
    for (uint i = tid; i < TILE_ROWS * UNITS_PER_BLOCK; i += WG) {
      const uint tile_row = i / UNITS_PER_BLOCK, u = i % UNITS_PER_BLOCK;
      const uint row = row0 + tile_row;
      if (row < p.rows) {
        load_w_unit(tile_row, row, block, u);
      } else {
        const uint per_unit = TILE_K / UNITS_PER_BLOCK;
        for (uint e = 0u; e < per_unit; ++e) w_tile[tile_row * TILE_K + u * per_unit + e] = 0.0;
      }
    }
    for (uint i = tid; i < TILE_TOKENS * TILE_K; i += WG) {
      const uint t = token0 + i / TILE_K, c = block * TILE_K + i % TILE_K;
      x_tile[i] = (t < p.n_tokens && c < p.cols) ? x[t * p.cols + c] : 0.0;
    }
    barrier();
    for (uint k = 0u; k < TILE_K; ++k) {
      vec4 a, b;
      for (uint i = 0u; i < 4u; ++i) a[i] = w_tile[(tr + ROW_THREADS * i) * TILE_K + k];
      for (uint j = 0u; j < 4u; ++j) b[j] = x_tile[(tc + TOKEN_THREADS * j) * TILE_K + k];
      for (uint i = 0u; i < 4u; ++i)
        for (uint j = 0u; j < 4u; ++j) acc[i][j] += a[i] * b[j];
    }
    barrier();
  }

  for (uint i = 0u; i < 4u; ++i) {
    const uint row = row0 + tr + ROW_THREADS * i;
    if (row >= p.rows) continue;
    for (uint j = 0u; j < 4u; ++j) {
      const uint t = token0 + tc + TOKEN_THREADS * j;
      if (t >= p.n_tokens) continue;
      const uint out_index = t * p.y_stride + p.row_offset + row;
      y[out_index] = p.accumulate != 0u ? y[out_index] + acc[i][j] : acc[i][j];
    }
  }
}
