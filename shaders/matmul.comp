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
#elif defined(WTYPE_F16)
const uint UNITS_PER_BLOCK = 16u;
#elif defined(WTYPE_Q8_0)
const uint UNITS_PER_BLOCK = 8u;
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
  w_tile[dst + u] = c < cols ? w_values[row_base + c] : 0.0;
#elif defined(WTYPE_F16)
  const uint c = block * 32u + 2u * u;
  const vec2 pair = c < cols ? unpackHalf2x16(w_values[row_base + block * 16u + u]) : vec2(0.0);
  w_tile[dst + 2u * u] = pair.x;
  w_tile[dst + 2u * u + 1u] = pair.y;  // a padding half is 0
#elif defined(WTYPE_Q8_0)
  const vec4 q = w_scale(row, block, cols) * q8_unpack(w_values[row_base + block * 8u + u]);
  w_tile[dst + 4u * u] = q.x;
  w_tile[dst + 4u * u + 1u] = q.y;
  w_tile[dst + 4u * u + 2u] = q.z;
  w_tile[dst + 4u * u + 3u] = q.w;
#else
  vec4 low, high;
  q4_unpack(w_values[row_base + block * 4u + u], low, high);
  const float d = w_scale(row, block, cols);
  low *= d;
  high *= d;
  for (uint i = 0u; i < 4u; ++i) {
    w_tile[dst + 4u * u + i] = low[i];
    w_tile[dst + 16u + 4u * u + i] = high[i];
  }
#endif
}

void main() {
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
