// Weight bindings and per-WTYPE dequantization, for the layout described in
// params.h ("Weight layout on the GPU"). The including shader defines
// W_BINDING and S_BINDING and exactly one of WTYPE_F32 / WTYPE_F16 /
// WTYPE_BF16 / WTYPE_Q8_0 / WTYPE_Q4_0 / WTYPE_Q4_1 / WTYPE_Q5_0 / WTYPE_Q5_1 /
// WTYPE_IQ4_NL / WTYPE_Q2_K / WTYPE_Q3_K / WTYPE_IQ4_XS / WTYPE_Q4_K /
// WTYPE_Q5_K / WTYPE_Q6_K (from the shader table).
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
#elif defined(WTYPE_F16) || defined(WTYPE_BF16)
#define W_UNIT_ELEMS 2u  // one word: two halves
#elif defined(WTYPE_Q8_0)
#define W_UNIT_ELEMS 4u  // one word: four int8
#define W_QUANTIZED 1
#elif defined(WTYPE_Q4_0)
#define W_UNIT_ELEMS 8u  // one word: eight nibbles (4 low, 4 high)
#define W_QUANTIZED 1
#elif defined(WTYPE_Q4_1) || defined(WTYPE_Q5_0) || defined(WTYPE_Q5_1) || defined(WTYPE_IQ4_NL)
#define W_QUADS 1  // blocks of 32, read four elements at a time through w_quad (below)
#elif defined(WTYPE_Q2_K) || defined(WTYPE_Q3_K) || defined(WTYPE_IQ4_XS)
#define W_QUADS 1  // blocks of 256, likewise
#define W_QUADS_256 1
#elif defined(WTYPE_Q4_K) || defined(WTYPE_Q5_K) || defined(WTYPE_Q6_K)
#define W_KQUANT 1  // super-blocks of 256, read a group of 64 at a time (below)
#else
#error "define one of WTYPE_F32 WTYPE_F16 WTYPE_BF16 WTYPE_Q8_0 WTYPE_Q4_0 WTYPE_Q4_1 WTYPE_Q5_0 WTYPE_Q5_1 WTYPE_IQ4_NL WTYPE_Q2_K WTYPE_Q3_K WTYPE_IQ4_XS WTYPE_Q4_K WTYPE_Q5_K WTYPE_Q6_K (see shaders/shaders.cmake)"
#endif

// One f16 scale per block (Q8_0/Q4_0/Q5_0/IQ4_NL: 32 elements; Q6_K: its
// super-block d), or for Q4_1/Q5_1 the pair {d, m} in one word per block;
// unused (but bound) for the other types.
layout(std430, binding = S_BINDING) readonly buffer WeightScales { uint w_scales[]; };

#if defined(W_KQUANT) || defined(W_QUADS_256)
#define W_BLOCK 256u
#else
#define W_BLOCK 32u
#endif

#if defined(WTYPE_Q4_K)
// Q4_K super-block, ggml's 144 bytes verbatim (models/ggml_kquants.h): texel
// 0 = {f16 d, f16 dmin} + 12 bytes of packed 6-bit scales/mins, texels 1..8 = qs.
const uint KQ_BLOCK_TEXELS = 9u;
const uint KQ_QS_TEXEL = 1u;
#elif defined(WTYPE_Q5_K)
// Q5_K: as Q4_K with qh[32] in texels 1..2; qs in texels 3..10 (176 bytes).
const uint KQ_BLOCK_TEXELS = 11u;
const uint KQ_QS_TEXEL = 3u;
#elif defined(WTYPE_Q6_K)
// Q6_K: ql[128] in texels 0..7, qh[64] in 8..11, int8 scales[16] in texel 12
// (208 bytes); its f16 d is in the scales binding, one per super-block.
const uint KQ_BLOCK_TEXELS = 13u;
#endif

#if defined(W_QUADS)
// Words of one block in the values, and the word where its codes start.
#if defined(WTYPE_Q5_0) || defined(WTYPE_Q5_1)
const uint QB_WORDS = 5u;  // qh, qs[16]
const uint QB_QS = 1u;
#elif defined(WTYPE_Q2_K)
const uint QB_WORDS = 20u;  // scales[16], qs[64]
const uint QB_QS = 4u;
#elif defined(WTYPE_Q3_K)
const uint QB_WORDS = 27u;  // hmask[32], qs[64], scales[12]
const uint QB_QS = 8u;
#elif defined(WTYPE_IQ4_XS)
const uint QB_WORDS = 33u;  // scales_l[4], qs[128]
const uint QB_QS = 1u;
#else
const uint QB_WORDS = 4u;  // qs[16]
const uint QB_QS = 0u;
#endif
#endif

// Words of one row's data before padding, and the padded row in texels/words.
uint w_data_words(uint cols) {
#if defined(WTYPE_F32)
  return cols;
#elif defined(WTYPE_F16) || defined(WTYPE_BF16)
  return (cols + 1u) / 2u;
#elif defined(WTYPE_Q8_0)
  return cols / 4u;
#elif defined(WTYPE_Q4_0) || defined(WTYPE_Q4_1) || defined(WTYPE_IQ4_NL)
  return cols / 8u;  // qs: 4 words per block
#elif defined(WTYPE_Q5_0) || defined(WTYPE_Q5_1)
  return cols / 32u * 5u;  // qh, then qs: 5 words per block
#elif defined(W_QUADS_256)
  return cols / 256u * QB_WORDS;
#else
  return cols / W_BLOCK * 4u * KQ_BLOCK_TEXELS;
#endif
}
uint w_row_texels(uint cols) { return (w_data_words(cols) + 3u) / 4u; }
uint w_row_words(uint cols) { return 4u * w_row_texels(cols); }

#if defined(WTYPE_Q4_1) || defined(WTYPE_Q5_1) || defined(WTYPE_Q2_K) || defined(WTYPE_IQ4_XS)
uint s_row_words(uint cols) { return cols / W_BLOCK; }
// The block's scale word: {d, m} (Q4_1/Q5_1: element = d * q + m), {d, dmin}
// (Q2_K), or d and scales_h (IQ4_XS).
uint w_scale_word(uint row, uint block, uint cols) { return w_scales[row * s_row_words(cols) + block]; }
vec2 w_scale_min(uint row, uint block, uint cols) { return unpackHalf2x16(w_scale_word(row, block, cols)); }
#else
uint s_row_words(uint cols) { return (cols / W_BLOCK + 1u) / 2u; }
#endif

float w_scale(uint row, uint block, uint cols) {
  const vec2 pair = unpackHalf2x16(w_scales[row * s_row_words(cols) + block / 2u]);
  return (block & 1u) == 0u ? pair.x : pair.y;
}

#if defined(W_QUADS)
// ---- Q4_1, Q5_0, Q5_1, IQ4_NL (models/ggml_types.h has ggml's layouts) -----
// A block's word j/4 of qs holds the nibbles of elements j..j+3 (low) and
// j+16..j+19 (high), j % 4 == 0; Q5's fifth bit of element e is bit e of qh.
#if defined(WTYPE_IQ4_NL) || defined(WTYPE_IQ4_XS)
const float IQ4_NL_VALUES[16] = float[16](-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0,
                                          38.0, 53.0, 69.0, 89.0, 113.0);
#endif

#if defined(W_QUADS_256)
// The byte `i` of a word, as a uint.
uint byte_of(uint word, uint i) { return (word >> (8u * i)) & 0xFFu; }

// Elements col .. col+3 of `row` (col % 4 == 0). Element e of a block is
// 128h + 32k + l (Q2_K/Q3_K: 2-bit codes in bits 2k of byte 32h + l of qs,
// group 8h + 2k + (l >= 16)); IQ4_XS: sub-block e / 32 as IQ4_NL's block.
vec4 w_quad(uint row, uint col, uint cols) {
  const uint b = col / 256u, e = col % 256u;
  const uint base = row * w_row_words(cols) + b * QB_WORDS;
#if defined(WTYPE_IQ4_XS)
  const uint ib = e / 32u, l = e % 32u;
  const uint qs = w_word(base + QB_QS + 4u * ib + (l % 16u) / 4u);
  const uint codes = l >= 16u ? (qs >> 4) & 0x0F0F0F0Fu : qs & 0x0F0F0F0Fu;
  const uint word = w_scale_word(row, b, cols);
  const uint ls = ((byte_of(w_word(base), ib / 2u) >> (4u * (ib % 2u))) & 0xFu) | (((word >> (16u + 2u * ib)) & 3u) << 4);
  const float dl = unpackHalf2x16(word).x * (float(ls) - 32.0);
  return dl * vec4(IQ4_NL_VALUES[codes & 0xFu], IQ4_NL_VALUES[(codes >> 8) & 0xFu], IQ4_NL_VALUES[(codes >> 16) & 0xFu],
                   IQ4_NL_VALUES[codes >> 24]);
#else
  const uint h = e / 128u, k = (e % 128u) / 32u, l = e % 32u;
  const uint group = 8u * h + 2u * k + (l >= 16u ? 1u : 0u);
  const uint codes = (w_word(base + QB_QS + (32u * h + l) / 4u) >> (2u * k)) & 0x03030303u;
  const vec4 q = vec4(codes & 0xFFu, (codes >> 8) & 0xFFu, (codes >> 16) & 0xFFu, codes >> 24);
#if defined(WTYPE_Q2_K)
  const uint sc = byte_of(w_word(base + group / 4u), group % 4u);
  const vec2 d_dmin = w_scale_min(row, b, cols);
  return (d_dmin.x * float(sc & 0xFu)) * q - d_dmin.y * float(sc >> 4);
#else
  // Q3_K: the high bit (bit 4h + k of hmask[l]) set means q as is, clear q - 4.
  const uint high = (w_word(base + l / 4u) >> (4u * h + k)) & 0x01010101u;
  const vec4 hv = vec4(high & 0xFFu, (high >> 8) & 0xFFu, (high >> 16) & 0xFFu, high >> 24);
  // The 6-bit scale of `group` from scales[12] (words 24..26), as ggml unpacks it.
  const uint i = group;
  uint sc;
  if (i < 4u) sc = (byte_of(w_word(base + 24u), i) & 0xFu) | ((byte_of(w_word(base + 26u), i) & 3u) << 4);
  else if (i < 8u) sc = (byte_of(w_word(base + 25u), i - 4u) & 0xFu) | (((byte_of(w_word(base + 26u), i - 4u) >> 2) & 3u) << 4);
  else if (i < 12u) sc = (byte_of(w_word(base + 24u), i - 8u) >> 4) | (((byte_of(w_word(base + 26u), i - 8u) >> 4) & 3u) << 4);
  else sc = (byte_of(w_word(base + 25u), i - 12u) >> 4) | (((byte_of(w_word(base + 26u), i - 12u) >> 6) & 3u) << 4);
  return (w_scale(row, b, cols) * (float(sc) - 32.0)) * (q - 4.0 * (1.0 - hv));
#endif
#endif
}
#else
// Elements col .. col+3 of `row` (col % 4 == 0).
vec4 w_quad(uint row, uint col, uint cols) {
  const uint b = col / 32u, e = col % 32u;
  const uint base = row * w_row_words(cols) + b * QB_WORDS;
  const uint qs = w_word(base + QB_QS + (e % 16u) / 4u);
  uint codes = e >= 16u ? (qs >> 4) & 0x0F0F0F0Fu : qs & 0x0F0F0F0Fu;
#if defined(WTYPE_Q5_0) || defined(WTYPE_Q5_1)
  const uint bits = (w_word(base) >> e) & 0xFu;  // the fifth bits of elements e .. e+3
  codes |= ((bits & 1u) << 4) | ((bits & 2u) << 11) | ((bits & 4u) << 18) | ((bits & 8u) << 25);
#endif
#if defined(WTYPE_IQ4_NL)
  return w_scale(row, b, cols) * vec4(IQ4_NL_VALUES[codes & 0xFu], IQ4_NL_VALUES[(codes >> 8) & 0xFu],
                                      IQ4_NL_VALUES[(codes >> 16) & 0xFu], IQ4_NL_VALUES[codes >> 24]);
#else
  const vec4 q = vec4(codes & 0xFFu, (codes >> 8) & 0xFFu, (codes >> 16) & 0xFFu, codes >> 24);
#if defined(WTYPE_Q5_0)
  return w_scale(row, b, cols) * (q - 16.0);
#else
  const vec2 dm = w_scale_min(row, b, cols);
  return dm.x * q + dm.y;
#endif
#endif
}

// A whole block of 32 dequantized at once, its scale (and min) read once:
// lo[i] = elements 4i..4i+3, hi[i] = 16+4i..16+4i+3. The CPU-device paths
// (one row per invocation) read blocks this way.
void w_block32(uint row, uint b, uint cols, out vec4 lo[4], out vec4 hi[4]) {
  const uint base = row * w_row_words(cols) + b * QB_WORDS;
#if defined(WTYPE_Q5_0) || defined(WTYPE_Q5_1)
  const uint qh = w_word(base);
#endif
#if defined(WTYPE_Q4_1) || defined(WTYPE_Q5_1)
  const vec2 dm = w_scale_min(row, b, cols);
#else
  const float d = w_scale(row, b, cols);
#endif
  for (uint i = 0u; i < 4u; ++i) {
    const uint qs = w_word(base + QB_QS + i);
    uint l = qs & 0x0F0F0F0Fu, h = (qs >> 4) & 0x0F0F0F0Fu;
#if defined(WTYPE_Q5_0) || defined(WTYPE_Q5_1)
    const uint bl = (qh >> (4u * i)) & 0xFu, bh = (qh >> (16u + 4u * i)) & 0xFu;
    l |= ((bl & 1u) << 4) | ((bl & 2u) << 11) | ((bl & 4u) << 18) | ((bl & 8u) << 25);
    h |= ((bh & 1u) << 4) | ((bh & 2u) << 11) | ((bh & 4u) << 18) | ((bh & 8u) << 25);
#endif
#if defined(WTYPE_IQ4_NL)
    lo[i] = d * vec4(IQ4_NL_VALUES[l & 0xFu], IQ4_NL_VALUES[(l >> 8) & 0xFu], IQ4_NL_VALUES[(l >> 16) & 0xFu],
                     IQ4_NL_VALUES[l >> 24]);
    hi[i] = d * vec4(IQ4_NL_VALUES[h & 0xFu], IQ4_NL_VALUES[(h >> 8) & 0xFu], IQ4_NL_VALUES[(h >> 16) & 0xFu],
                     IQ4_NL_VALUES[h >> 24]);
#else
    const vec4 ql = vec4(l & 0xFFu, (l >> 8) & 0xFFu, (l >> 16) & 0xFFu, l >> 24);
    const vec4 qhv = vec4(h & 0xFFu, (h >> 8) & 0xFFu, (h >> 16) & 0xFFu, h >> 24);
#if defined(WTYPE_Q5_0)
    lo[i] = d * (ql - 16.0);
    hi[i] = d * (qhv - 16.0);
#else
    lo[i] = dm.x * ql + dm.y;
    hi[i] = dm.x * qhv + dm.y;
#endif
#endif
  }
}
#endif  // W_QUADS_256
#endif

#if defined(W_KQUANT)
// ---- K-quants (models/ggml_kquants.h has the byte layouts) ----------------
// A row is cols / 256 super-blocks of KQ_BLOCK_TEXELS texels. Shaders read a
// super-block one group of 64 elements at a time (g = 0..3): Q4_K/Q5_K
// sub-blocks 2g and 2g+1 share the bytes qs[32g .. 32g+31] (low and high
// nibbles); Q6_K group g uses half h = g/2 of ql/qh and scales 4g..4g+3.

// The four bytes of a word as floats, in byte order.
vec4 kq_bytes(uint word) {
  return vec4(word & 0xFFu, (word >> 8) & 0xFFu, (word >> 16) & 0xFFu, word >> 24);
}

#if defined(WTYPE_Q4_K) || defined(WTYPE_Q5_K)
// From the header texel: (d, dmin), and the eight 6-bit scales and mins
// unpacked four to a word: .x scales 0-3, .y mins 0-3, .z scales 4-7, .w mins
// 4-7 (ggml's get_scale_min_k4 done on whole words).
void kq_header(uvec4 h, out vec2 d_dmin, out uvec4 sm) {
  d_dmin = unpackHalf2x16(h.x);
  sm.x = h.y & 0x3F3F3F3Fu;
  sm.y = h.z & 0x3F3F3F3Fu;
  sm.z = (h.w & 0x0F0F0F0Fu) | ((h.y >> 2) & 0x30303030u);
  sm.w = ((h.w >> 4) & 0x0F0F0F0Fu) | ((h.z >> 2) & 0x30303030u);
}
// (d * scale, dmin * min) of sub-block j: element = .x * q - .y.
vec2 kq_step_offset(vec2 d_dmin, uvec4 sm, uint j) {
  const uint shift = 8u * (j & 3u);
  const uint scale = ((j < 4u ? sm.x : sm.z) >> shift) & 0xFFu;
  const uint min_value = ((j < 4u ? sm.y : sm.w) >> shift) & 0xFFu;
  return d_dmin * vec2(scale, min_value);
}
// The codes (0..15 or 0..31) in one word of qs (and its word of qh) of
// group g: four elements of sub-block 2g (`low`) and of sub-block 2g+1 (`high`).
void kq_codes(uint qs, uint qh, uint g, out vec4 low, out vec4 high) {
  uint lo = qs & 0x0F0F0F0Fu, hi = (qs >> 4) & 0x0F0F0F0Fu;
#if defined(WTYPE_Q5_K)
  // Bit s of qh byte l is the fifth bit of element l of sub-block s.
  lo |= ((qh >> (2u * g)) & 0x01010101u) << 4;
  hi |= ((qh >> (2u * g + 1u)) & 0x01010101u) << 4;
#endif
  low = kq_bytes(lo);
  high = kq_bytes(hi);
}
// Group g's 32 bytes of qs (elements 4i.. of both sub-blocks in word i) and
// the 32 bytes of qh (Q5_K; zeros for Q4_K), as texels: 2 + 2 reads.
void kq_group_texels(uint T, uint g, out uvec4 qs[2], out uvec4 qh[2]) {
  qs[0] = w_texel(T + KQ_QS_TEXEL + 2u * g);
  qs[1] = w_texel(T + KQ_QS_TEXEL + 2u * g + 1u);
#if defined(WTYPE_Q5_K)
  qh[0] = w_texel(T + 1u);
  qh[1] = w_texel(T + 2u);
#else
  qh[0] = uvec4(0u);
  qh[1] = uvec4(0u);
#endif
}
#endif

#if defined(WTYPE_Q6_K)
// Codes minus 32 from one word of ql and its word of qh: `qh_shift` picks the
// quarter's two high bits, (g & 1) the nibble.
vec4 kq_codes6(uint ql, uint qh, uint g, uint qh_shift) {
  return kq_bytes(((ql >> (4u * (g & 1u))) & 0x0F0F0F0Fu) | (((qh >> qh_shift) & 0x03030303u) << 4)) - 32.0;
}
// Group g = 64 elements in half h = g/2: the first 32 from ql bytes 64h..64h+31
// (`ql_first`), the next 32 from 64h+32.. (`ql_second`), both nibble g & 1;
// high bits from qh bytes 32h.. (bits 4(g&1) and 4(g&1)+2).
void kq_group_texels6(uint T, uint g, out uvec4 ql_first[2], out uvec4 ql_second[2], out uvec4 qh[2]) {
  const uint h = g / 2u;
  ql_first[0] = w_texel(T + 4u * h);
  ql_first[1] = w_texel(T + 4u * h + 1u);
  ql_second[0] = w_texel(T + 4u * h + 2u);
  ql_second[1] = w_texel(T + 4u * h + 3u);
  qh[0] = w_texel(T + 8u + 2u * h);
  qh[1] = w_texel(T + 9u + 2u * h);
}
// The four int8 scales of group g (its 16-element pieces in order), as floats.
vec4 kq_group_scales(uint T, uint g) {
  const int word = int(w_word(4u * (T + 12u) + g));
  return vec4(bitfieldExtract(word, 0, 8), bitfieldExtract(word, 8, 8), bitfieldExtract(word, 16, 8),
              bitfieldExtract(word, 24, 8));
}
#endif

// Dot product of group g with x (xg[q] = x at elements 64g + 4q ..), without
// dequantizing each element: scales multiply per-piece sums.
// `xsums`: sums of xg[0..7] and xg[8..15] (Q4_K/Q5_K mins; unused for Q6_K).
float kq_group_dot(uint row, uint T, uint b, uint g, uint cols, vec4 xg[16], vec2 xsums) {
#if defined(WTYPE_Q6_K)
  uvec4 first[2], second[2], qh[2];
  kq_group_texels6(T, g, first, second, qh);
  const uint shift = 4u * (g & 1u);
  // Sums per 16-element piece: elements 0-15, 16-31, 32-47, 48-63 of the group.
  float p0 = 0.0, p1 = 0.0, p2 = 0.0, p3 = 0.0;
  for (uint i = 0u; i < 4u; ++i) {
    p0 += dot(kq_codes6(first[0][i], qh[0][i], g, shift), xg[i]);
    p1 += dot(kq_codes6(first[1][i], qh[1][i], g, shift), xg[4u + i]);
    p2 += dot(kq_codes6(second[0][i], qh[0][i], g, shift + 2u), xg[8u + i]);
    p3 += dot(kq_codes6(second[1][i], qh[1][i], g, shift + 2u), xg[12u + i]);
  }
  return w_scale(row, b, cols) * dot(kq_group_scales(T, g), vec4(p0, p1, p2, p3));
#else
  vec2 d_dmin;
  uvec4 sm;
  kq_header(w_texel(T), d_dmin, sm);
  const vec2 a = kq_step_offset(d_dmin, sm, 2u * g), c = kq_step_offset(d_dmin, sm, 2u * g + 1u);
  uvec4 qs[2], qh[2];
  kq_group_texels(T, g, qs, qh);
  float dot_low = 0.0, dot_high = 0.0;
  for (uint i = 0u; i < 4u; ++i) {
    vec4 low, high;
    kq_codes(qs[0][i], qh[0][i], g, low, high);
    dot_low += dot(low, xg[i]);
    dot_high += dot(high, xg[8u + i]);
    kq_codes(qs[1][i], qh[1][i], g, low, high);
    dot_low += dot(low, xg[4u + i]);
    dot_high += dot(high, xg[12u + i]);
  }
  return a.x * dot_low - a.y * xsums.x + c.x * dot_high - c.y * xsums.y;
#endif
}

// Elements col .. col+3 of `row` (col % 4 == 0): for gathers and the
// shared-row/tile paths, which read a row a few elements at a time.
vec4 w_quad(uint row, uint col, uint cols) {
  const uint b = col / W_BLOCK, e = col % W_BLOCK, g = e / 64u, i = (e % 32u) / 4u;
  const uint T = row * w_row_texels(cols) + b * KQ_BLOCK_TEXELS;
  const bool second = (e % 64u) >= 32u;
#if defined(WTYPE_Q6_K)
  const uint h = g / 2u;
  const uint ql = w_word(4u * T + 16u * h + (second ? 8u : 0u) + i);
  const uint qh = w_word(4u * (T + 8u) + 8u * h + i);
  const vec4 codes = kq_codes6(ql, qh, g, 4u * (g & 1u) + (second ? 2u : 0u));
  const float scale = kq_group_scales(T, g)[(e % 64u) / 16u];
  return (w_scale(row, b, cols) * scale) * codes;
#else
  vec2 d_dmin;
  uvec4 sm;
  kq_header(w_texel(T), d_dmin, sm);
  const vec2 so = kq_step_offset(d_dmin, sm, 2u * g + (second ? 1u : 0u));
  const uint qs = w_word(4u * (T + KQ_QS_TEXEL + 2u * g) + i);
#if defined(WTYPE_Q5_K)
  const uint qh = w_word(4u * (T + 1u) + i);
#else
  const uint qh = 0u;
#endif
  vec4 low, high;
  kq_codes(qs, qh, g, low, high);
  return so.x * (second ? high : low) - so.y;
#endif
}
#endif

// Element (row, col) as f32: for gathers (embed); matvec/matmul read units.
float w_element(uint row, uint col, uint cols) {
#if defined(WTYPE_F32)
  return uintBitsToFloat(w_word(row * w_row_words(cols) + col));
#elif defined(WTYPE_F16)
  const vec2 pair = unpackHalf2x16(w_word(row * w_row_words(cols) + col / 2u));
  return (col & 1u) == 0u ? pair.x : pair.y;
#elif defined(WTYPE_BF16)
  const uint word = w_word(row * w_row_words(cols) + col / 2u);
  return uintBitsToFloat((col & 1u) == 0u ? word << 16 : word & 0xFFFF0000u);
#elif defined(WTYPE_Q8_0)
  const uint word = w_word(row * w_row_words(cols) + col / 4u);
  return w_scale(row, col / W_BLOCK, cols) * float(bitfieldExtract(int(word), int(8u * (col % 4u)), 8));
#elif defined(W_KQUANT) || defined(W_QUADS)
  return w_quad(row, col & ~3u, cols)[col & 3u];
#else
  const uint block = col / W_BLOCK, j = col % W_BLOCK;
  const uint byte_in_block = j % 16u;  // element j and j+16 share a byte
  const uint word = w_word(row * w_row_words(cols) + block * 4u + byte_in_block / 4u);
  const uint shift = 8u * (byte_in_block % 4u) + (j >= 16u ? 4u : 0u);
  return w_scale(row, block, cols) * (float((word >> shift) & 0xFu) - 8.0);
#endif
}

#if defined(WTYPE_F16)
vec2 w_pair(uint word) { return unpackHalf2x16(word); }  // the two elements of a word
#elif defined(WTYPE_BF16)
// bfloat16 is the top half of an f32.
vec2 w_pair(uint word) { return vec2(uintBitsToFloat(word << 16), uintBitsToFloat(word & 0xFFFF0000u)); }
#endif

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
