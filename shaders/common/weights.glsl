// Weight bindings and per-WTYPE dequantization, for the layout described in
// params.h ("Weight layout on the GPU"). The including shader defines
// W_BINDING and S_BINDING and exactly one of WTYPE_F32 / WTYPE_F16 /
// WTYPE_Q8_0 / WTYPE_Q4_0 (from the shader table).
//
// Every value row starts on a 16-byte texel and every scale row on a 32-bit
// word, so a shader addresses row r at texel r * w_row_texels(cols) (word
// r * w_row_words(cols)) of `w_texels` and word r * s_row_words(cols) of
// `w_scales`; the bound range may begin at any row (chunks).
#ifndef KVSCOPE_WEIGHTS_GLSL
#define KVSCOPE_WEIGHTS_GLSL

// Values are read as 16-byte texels (a uniform texel buffer, R32G32B32A32_UINT;
// PipelineDesc::texel_bindings): measured 3-7x faster than storage-buffer
// loads on lavapipe, and a cached read path on GPUs. Rows are padded to whole
// texels, so a row starts at texel r * w_row_texels(cols).
layout(binding = W_BINDING) uniform usamplerBuffer w_texels;
uvec4 w_texel(uint t) { return texelFetch(w_texels, int(t)); }
uint w_word(uint i) { return texelFetch(w_texels, int(i >> 2u))[i & 3u]; }

#if defined(WTYPE_F32)
// Elements per "unit": the piece of a row one invocation reads at a time.
#define W_UNIT_ELEMS 4u
#elif defined(WTYPE_F16)
#define W_UNIT_ELEMS 2u  // one word: two halves
#elif defined(WTYPE_Q8_0)
#define W_UNIT_ELEMS 4u  // one word: four int8
#define W_QUANTIZED 1
#elif defined(WTYPE_Q4_0)
#define W_UNIT_ELEMS 8u  // one word: eight nibbles (4 low, 4 high)
#define W_QUANTIZED 1
#else
#error "define one of WTYPE_F32 WTYPE_F16 WTYPE_Q8_0 WTYPE_Q4_0 (see shaders/shaders.cmake)"
#endif

// One f16 scale per block of 32; unused (but bound) for F32/F16.
layout(std430, binding = S_BINDING) readonly buffer WeightScales { uint w_scales[]; };

#define W_BLOCK 32u

// Words of one row's data before padding, and the padded row in texels/words.
uint w_data_words(uint cols) {
#if defined(WTYPE_F32)
  return cols;
#elif defined(WTYPE_F16)
  return (cols + 1u) / 2u;
#elif defined(WTYPE_Q8_0)
  return cols / 4u;
#else
  return cols / 8u;
#endif
}
uint w_row_texels(uint cols) { return (w_data_words(cols) + 3u) / 4u; }
uint w_row_words(uint cols) { return 4u * w_row_texels(cols); }

uint s_row_words(uint cols) { return (cols / W_BLOCK + 1u) / 2u; }

float w_scale(uint row, uint block, uint cols) {
  const vec2 pair = unpackHalf2x16(w_scales[row * s_row_words(cols) + block / 2u]);
  return (block & 1u) == 0u ? pair.x : pair.y;
}

// Element (row, col) as f32: for gathers (embed); matvec/matmul read units.
float w_element(uint row, uint col, uint cols) {
#if defined(WTYPE_F32)
  return uintBitsToFloat(w_word(row * w_row_words(cols) + col));
#elif defined(WTYPE_F16)
  const vec2 pair = unpackHalf2x16(w_word(row * w_row_words(cols) + col / 2u));
  return (col & 1u) == 0u ? pair.x : pair.y;
#elif defined(WTYPE_Q8_0)
  const uint word = w_word(row * w_row_words(cols) + col / 4u);
  return w_scale(row, col / W_BLOCK, cols) * float(bitfieldExtract(int(word), int(8u * (col % 4u)), 8));
#else
  const uint block = col / W_BLOCK, j = col % W_BLOCK;
  const uint byte_in_block = j % 16u;  // element j and j+16 share a byte
  const uint word = w_word(row * w_row_words(cols) + block * 4u + byte_in_block / 4u);
  const uint shift = 8u * (byte_in_block % 4u) + (j >= 16u ? 4u : 0u);
  return w_scale(row, block, cols) * (float((word >> shift) & 0xFu) - 8.0);
#endif
}

#if defined(WTYPE_Q8_0)
// The four int8 of a word, in element order.
vec4 q8_unpack(uint word) {
  const int w = int(word);
  return vec4(bitfieldExtract(w, 0, 8), bitfieldExtract(w, 8, 8), bitfieldExtract(w, 16, 8),
              bitfieldExtract(w, 24, 8));
}
#endif

#if defined(WTYPE_Q4_0)
// A word holds bytes 4i..4i+3 of a block: elements 4i..4i+3 in the low
// nibbles (`low`) and 4i+16..4i+19 in the high nibbles (`high`), minus 8.
void q4_unpack(uint word, out vec4 low, out vec4 high) {
  low = vec4(word & 0xFu, (word >> 8) & 0xFu, (word >> 16) & 0xFu, (word >> 24) & 0xFu) - 8.0;
  high = vec4((word >> 4) & 0xFu, (word >> 12) & 0xFu, (word >> 20) & 0xFu, (word >> 28) & 0xFu) - 8.0;
}
#endif

#endif
