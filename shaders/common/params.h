// Push-constant structs shared by the GLSL shaders and C++ (one declaration).
// Each comment lists the shader's bindings (set 0) in order: storage buffers,
// except weight values (W), which are uniform texel buffers.
// Specialization constant 0 is always the workgroup size (local_size_x_id = 0),
// chosen on the host from the device's subgroup size. It must be a power of two
// (the shared-memory reductions halve it), 8..maxComputeWorkGroupSize; the
// shared arrays are sized by it. "groups:" below says what to dispatch.
//
// Weight layout on the GPU (models/gpu_layout.h repacks GGUF blocks into it):
//   A row is w_row_words(cols) words of "values", padded with zeros to a whole
//   16-byte texel, and s_row_words(cols) words of "scales" (padding is zero),
//   so row r of a tensor starts at texel r * w_row_texels(cols) of its values
//   and word r * s_row_words(cols) of its scales
//   (GpuWeight::value_row_bytes()/scale_row_bytes() in models/gpu_layout.h).
//   Values are bound as a uniform texel buffer of R32G32B32A32_UINT texels
//   (gpu::PipelineDesc::texel_bindings; shaders/common/weights.glsl), scales
//   as a storage buffer.
//   binding W ("values"): F32  float[rows][cols]
//                         F16  halves, two per uint (element e of a row in the
//                              low half of word e/2 when e is even); a row with
//                              odd cols ends with one zero half
//                         Q8_0 int8 quants, four per uint (element e of a row in
//                              byte e%4 of word e/4, little-endian)
//                         Q4_0 4-bit quants, eight per uint: for block b and its
//                              16 bytes as ggml stores them (element j in the low
//                              nibble of byte j, element j+16 in the high
//                              nibble), byte k of block b of a row is byte
//                              (b*16+k) of the row
//                         BF16 as F16, bfloat16 halves
//                         Q4_K/Q5_K ggml's super-blocks of 256 verbatim (144 /
//                              176 bytes: whole texels; models/ggml_kquants.h)
//                         Q6_K per super-block its first 208 bytes (ql, qh,
//                              int8 scales: 13 texels); its f16 d goes to S
//   binding S ("scales"): Q8_0/Q4_0 one f16 scale per block of 32, two per uint
//                         (block b of a row in the low half of word b/2 when b
//                         is even; a row with an odd block count, e.g. cols
//                         288 = 9 blocks, ends with a zero half);
//                         Q6_K one f16 d per super-block of 256, likewise;
//                         F32/F16/BF16/Q4_K/Q5_K unused (bind any buffer).
//   A tensor is rows x cols with cols contiguous (GGUF ne[0] = cols).
//   Large tensors are bound in chunks of rows: `row_offset` is the first row
//   of the chunk within the tensor's output indexing; the W/S bindings start at
//   that chunk (offset = first row * row bytes, which must be a multiple of
//   minTexelBufferOffsetAlignment for W and minStorageBufferOffsetAlignment
//   for S; a chunk's W range at most maxTexelBufferElements texels, its S
//   range at most maxStorageBufferRange: choose chunk rows accordingly).
//   Q8_0/Q4_0 need cols % 32 == 0, Q4_K/Q5_K/Q6_K cols % 256 == 0.
#ifndef KVSCOPE_PARAMS_H
#define KVSCOPE_PARAMS_H

#ifdef __cplusplus
#include <cstdint>
namespace kvscope::params {
using uint = uint32_t;
// A member's value when a C++ initializer leaves it out (GLSL has none).
#define KVSCOPE_DEFAULT(v) = v
#else
#define KVSCOPE_DEFAULT(v)
#endif

// matvec: rows per workgroup, the default of specialization constant 1.
#define KVSCOPE_MATVEC_ROWS_PER_GROUP 4
// matvec on CPU devices: whole rows per invocation (spec 1 = wg * this);
// each x load serves that many rows (measured ~10% faster decode on lavapipe than 1).
#define KVSCOPE_MATVEC_CPU_ROWS_PER_INVOCATION 4
// matmul: rows of W per workgroup tile (fixed); tokens per tile = wg / 2.
#define KVSCOPE_MATMUL_TILE_ROWS 32
// matmul with spec 1 = 1 (one row per invocation): tokens per workgroup.
#define KVSCOPE_MATMUL_CPU_TOKENS 8
// attention: largest head_dim (the query lives in shared memory).
#define KVSCOPE_ATTENTION_MAX_HEAD_DIM 256
// kivi2: largest token group (kv::kMaxTokenGroup; kivi_key_write's shared row table).
#define KVSCOPE_KIVI_MAX_TOKEN_GROUP 256

// embed: 0 token ids int[n_tokens], 1 W [n_vocab][dim], 2 S, 3 out f32[n_tokens][dim]
// out = row * scale (gemma3: sqrt(dim)). groups: (n_tokens); threads stride over dim.
struct EmbedParams {
  uint n_tokens;
  uint dim;
  uint n_vocab;   // rows in this chunk of the table (the W/S bindings start at row_offset)
  uint row_offset;  // token id t is written only when row_offset <= t < row_offset + n_vocab;
                    // other ids are left untouched (another chunk's dispatch writes them;
                    // the host rejects ids outside the vocabulary before upload)
  float scale KVSCOPE_DEFAULT(1.0f);
};

// rmsnorm: 0 x f32[n_rows][n], 1 weight f32[n], 2 out f32[n_rows][n]
// out = x / sqrt(mean(x^2) + eps) * weight. groups: (n_rows)
// rmsnorm: 0 x, 1 weight f32[n], 2 out (may be x). Row r of n elements starts
// at r * n, or with rows_per_group > 0 (per-head norms inside q|k|v rows) at
// (r / rows_per_group) * group_stride + row_offset + (r % rows_per_group) * n.
// accumulate = 1 adds the normed row into out (gemma3's post-norms onto the
// residual; out must then not be x).
struct RmsNormParams {
  uint n_rows;
  uint n;
  float eps;
  uint rows_per_group;
  uint group_stride;
  uint row_offset;
  uint accumulate;
};

// matvec (decode): 0 W [rows][cols], 1 S, 2 x f32[n_vec][cols], 3 y f32[n_vec][y_stride]
// y[v][row_offset + r] (+)= sum_k W[r][k] * x[v][k] for r < rows.
// accumulate = 1 adds into y (fused residual), 0 overwrites.
// spec 1: rows per workgroup (a power of two dividing wg, or wg * k; default
// KVSCOPE_MATVEC_ROWS_PER_GROUP); wg / rows_per_group invocations share a row.
// rows_per_group == wg * k (k = 1..4) gives each invocation k whole rows
// (rows first + j * wg, j < k): use it on CPU devices (DeviceInfo::type "cpu",
// lavapipe) with k = KVSCOPE_MATVEC_CPU_ROWS_PER_INVOCATION, where it measured
// ~3x faster (invocations are SIMD lanes there; x reads become uniform); keep
// the default on GPUs, where invocations sharing a row read it coalesced.
// groups: (ceil(rows / rows_per_group), n_vec)
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
// spec 1 = 0 (default, GPUs): shared-memory tiles of KVSCOPE_MATMUL_TILE_ROWS
//   rows x (wg / 2) tokens; wg >= 8.
//   groups: (ceil(rows / KVSCOPE_MATMUL_TILE_ROWS), ceil(n_tokens / (wg / 2)))
// spec 1 = 1 (CPU devices, DeviceInfo::type "cpu": measured faster on
//   lavapipe): one row per invocation, KVSCOPE_MATMUL_CPU_TOKENS tokens per group.
//   groups: (ceil(rows / wg), ceil(n_tokens / KVSCOPE_MATMUL_CPU_TOKENS))
struct MatMulParams {
  uint rows;
  uint cols;
  uint n_tokens;
  uint y_stride;
  uint row_offset;
  uint accumulate;
};

// How one layer's keys and values are laid out in their caches: the host
// copies it from kv::TensorLayout (KvCache::key_layout()/value_layout()),
// whose comment in kv/formats.h specifies every format's words. Shaders
// variants are per (key format, value format): K_* and V_* defines
// (shaders/shaders.cmake, shaders/common/kv.glsl).
struct KvLayout {
  uint group_size;       // elements per quantization group along head_dim (q8, q4, kivi2 values)
  uint k_row_words;      // words per (kv_head, slot) row of the key cache: codes, then params
  uint k_code_words;
  uint v_row_words;
  uint v_code_words;
  uint token_group;      // kivi2 keys: slots per block, = rows of the f16 window
  uint k_blocks;         // kivi2 keys: blocks per kv head
  uint k_params_offset;  // kivi2 keys: word of [n_kv_head][k_blocks][head_dim] scale | min << 16
  uint k_recent_offset;  // kivi2 keys: word of [n_kv_head][min(token_group, capacity)][head_dim/2] f16 pairs
  uint v_window;         // kivi2 values: positions in the f16 window, min(token_group, capacity); 0 otherwise
  uint v_recent_offset;  // kivi2 values: word of [n_kv_head][v_window][1 + head_dim/2]: position tag, f16 pairs
};

// rope_kv_write: 0 qkv f32[n_tokens][qkv_stride], a token's row holding its q
// heads (n_head * head_dim), then k heads and v heads (n_kv_head * head_dim
// each); 1 positions int[n_tokens]; 2 slots int[n_tokens][n_kv_head] (slot of
// the token in that head's table; <0 or >= capacity: not stored); 3 K cache,
// 4 V cache, each in its format (KvLayout); 5 frequency factors
// f32[rope_dim/2] (read only when has_freq_factors != 0; bind any buffer otherwise).
// RoPE (shaders/common/rope.glsl): pair i < rope_dim/2 of each head — dims
// (2i, 2i+1) in rope_mode 0 (llama), (i, i + rope_dim/2) in rope_mode 1
// (NeoX: qwen2) — rotated by pos * theta^(-2i/rope_dim) / freq_factor[i]; the
// other dims are left alone. q is rotated in place in the qkv row; k is rotated on its way to
// the cache and quantized there, v quantized (k and v in the qkv row are left
// as they were) — except kivi2 keys: their k is rotated in place in the qkv
// row and not stored, for kivi_key_write to store. head_dim even.
// groups: (n_head + n_kv_head, n_tokens)
struct RopeKvWriteParams {
  uint n_tokens;
  uint n_head;
  uint n_kv_head;
  uint head_dim;
  uint rope_dim;
  float theta;
  uint capacity;
  uint qkv_stride;  // floats from one token's row to the next, >= (n_head + 2 n_kv_head) head_dim
  KvLayout kv;
  uint rope_mode;         // ROPE_MODE_NORMAL 0 (llama) or ROPE_MODE_NEOX 1 (qwen2), rope.glsl
  uint has_freq_factors;  // 1: divide pair i's frequency by binding 5's [i] (Llama 3 rope_freqs)
  // 1 (rolling StreamingLLM): k is stored (kivi2: left in the row) un-rotated;
  // attention rotates it at its cache-relative position, and binding 1 then
  // holds the queries' cache-relative positions.
  uint keys_unrotated;
  float mscale KVSCOPE_DEFAULT(1.0f);  // the rotated pairs times this (rope.glsl; Phi-3.5's attn_factor)
  // 1: quantized keys (q8, q4, kivi2) are Hadamard-mixed after RoPE and before
  // quantizing (kv/hadamard.h), queries mixed alike and scaled by 1/P (not
  // with keys_unrotated: rolling attention turns each key back instead).
  uint hadamard KVSCOPE_DEFAULT(0);
};

// kivi_key_write (kivi2 keys, after rope_kv_write): 0 qkv (k rotated, at
// k_offset in each row), 1 slots int[n_tokens][n_kv_head], 2 open blocks
// int[n_kv_head] (KvCache::open_blocks: each head's open block after this
// step's reserve, -1: none), 3 K cache.
// One workgroup per kv head walks the tokens in order. phase 0 (before
// attention): after the last token of a block that is not open (so
// complete), the block is quantized per channel from its rows: the step's
// keys rounded to f16, the earlier ones from the f16 window
// (kv::TensorImage::write). phase 1 (after attention): the step's keys in the
// open block go into the window row slot % token_group
// (kv::TensorImage::write_window). token_group <= KVSCOPE_KIVI_MAX_TOKEN_GROUP.
// groups: (n_kv_head)
struct KiviKeyWriteParams {
  uint n_tokens;
  uint n_kv_head;
  uint head_dim;
  uint capacity;
  uint qkv_stride;
  uint k_offset;  // floats from a row's start to its first k head: n_head * head_dim
  KvLayout kv;
  uint phase KVSCOPE_DEFAULT(0);
};

// kivi_value_window (kivi2 values, after attention): 0 qkv (v at v_offset in
// each row), 1 positions int[n_tokens], 2 V cache. The last
// min(n_tokens, kv.v_window) tokens' values go into the f16 window, position
// p into row p % v_window with tag p (kv::TensorImage::write_window).
// groups: (n_kv_head, min(n_tokens, kv.v_window))
struct KiviValueWindowParams {
  uint n_tokens;
  uint n_kv_head;
  uint head_dim;
  uint qkv_stride;
  uint v_offset;  // floats from a row's start to its first v head: (n_head + n_kv_head) * head_dim
  KvLayout kv;
};

// attention: 0 q f32[n_tokens][q_stride] (query heads at the start of each
// row: the qkv rows of rope_kv_write), 1 K cache, 2 V cache (each in its
// format: KvLayout), 3 slot positions int[n_kv_head][capacity] (token position
// held by each slot, -1: empty), 4 query positions int[n_tokens],
// 5 out f32[n_tokens][n_head*head_dim], 6 probs f32[n_tokens][n_head][capacity]
// (softmax row over slots; 0 for masked slots — doubles as the attention
// probe), 7 open blocks int[n_kv_head] (kivi2 keys: the block read from the
// f16 window; other formats ignore it), 8 rope positions int[n_kv_head][capacity]
// and 9 frequency factors f32[rope_dim/2] (both read only when rolling != 0;
// bind any buffer otherwise).
// rolling != 0 (rolling StreamingLLM): keys are stored un-rotated; each is
// rotated after dequantization at its slot's cache-relative position
// (binding 8, KvCache::rope_positions) the way rope_kv_write rotates
// (rope.glsl: rope_mode, rope_theta, rope_dim, the factors when
// has_freq_factors != 0); the query arrives rotated at its own
// cache-relative position.
// Query head h reads kv head h / (n_head / n_kv_head). Slot s is visible to a
// query at position p when 0 <= slot_pos[s] <= p. Only slots < n_slots are
// scanned; probs of slots in [n_slots, capacity) are written as 0. A query
// that sees no slot gets zeros. window > 0 (sliding-window layers): slot s is
// visible only when also p - slot_pos[s] < window. kv_slots: slots per kv
// head of the K and V caches when fewer than capacity (a sliding-window
// layer's cache holds only its window; 0: capacity); probs rows and slot
// positions stay capacity wide. scale: the model's query
// scale (1/sqrt(head_dim) mostly); head_dim even and
// <= KVSCOPE_ATTENTION_MAX_HEAD_DIM.
// kivi2 (kv::TensorImage::read_for_query is the rule): with step_rows != 0
// the q rows are the whole qkv rows of the step's tokens, at positions
// query_pos[0] + t, and binding 10 holds their slots int[n_tokens][n_kv_head]
// (rope_kv_write's); a query reads the keys of its own block and the values
// of the last kv.v_window positions up to its own in f16: the step's own from
// their qkv rows (k at n_head * head_dim, v after the k heads), older ones
// from the windows. step_rows 0: only the windows (bind any buffer at 10).
// groups: (n_head, n_tokens)
struct AttentionParams {
  uint n_tokens;
  uint n_head;
  uint n_kv_head;
  uint head_dim;
  uint capacity;
  uint n_slots;
  float scale;
  uint q_stride;  // floats from one token's q row to the next, >= n_head * head_dim
  KvLayout kv;
  uint rolling;
  uint rope_dim;
  float rope_theta;
  uint rope_mode;
  uint has_freq_factors;
  uint window;
  uint kv_slots;
  float rope_mscale KVSCOPE_DEFAULT(1.0f);  // rolling: rope_kv_write's mscale
  uint step_rows KVSCOPE_DEFAULT(0);
  // rolling with Hadamard-mixed keys (RopeKvWriteParams::hadamard): each key
  // is dequantized whole and turned back (kv::hadamard_unmix) before RoPE.
  uint hadamard KVSCOPE_DEFAULT(0);
  // sparse-V: > 0 skips (does not read or add) the value of every slot whose
  // attention weight is below it; the weights are not renormalized.
  float sparse_v KVSCOPE_DEFAULT(0.0f);
};

// attention_scores: 0 probs f32[n_tokens][n_head][capacity] (attention's),
// 1 slot positions int[n_kv_head][capacity], 2 query positions int[n_tokens],
// 3 scores f32[n_kv_head][capacity]. scores[kv][s] = sum over the query heads
// of kv head kv and the queries t in [first_query, n_tokens) of probs[t][h][s]
// (0 for s >= n_slots); accumulate != 0 adds it to the old value, except for
// empty slots and slots written by this call (position >= query position 0),
// which start over. groups: (ceil(capacity / wg), n_kv_head)
struct AttentionScoresParams {
  uint n_tokens;
  uint n_head;
  uint n_kv_head;
  uint capacity;
  uint n_slots;
  uint first_query;
  uint accumulate;
};

// swiglu: 0 gate|up f32[n_tokens][in_stride] (gate in columns [0, n), up in
// [n, 2n): the output rows of the fused w1|w3 projection), 1 out f32[n_tokens][n];
// out = act(gate) * up: act 0 silu (gate * sigmoid(gate), SwiGLU), 1 GELU
// in its tanh form (GeGLU: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))).
// groups: (ceil(n / wg), n_tokens)
struct SwigluParams {
  uint n_tokens;
  uint n;
  uint in_stride;  // floats from one token's gate|up row to the next, >= 2n
  uint act;        // models/hparams.h FfnActivation
};

// add: 0 a f32[n], 1 b f32[n or b_period], 2 out f32[n]; out[i] = a[i] + b[i]
// (b_period 0) or a[i] + b[i % b_period] (a bias row added to every row of a;
// a and out may be one buffer). groups: (ceil(n / wg))
struct AddParams {
  uint n;
  uint b_period;
};

#ifdef __cplusplus
}  // namespace kvscope::params
static_assert(sizeof(kvscope::params::AttentionParams) <= 128);
static_assert(sizeof(kvscope::params::RopeKvWriteParams) <= 128);
static_assert(sizeof(kvscope::params::KiviKeyWriteParams) <= 128);
static_assert(sizeof(kvscope::params::KiviValueWindowParams) <= 128);
static_assert(sizeof(kvscope::params::MatMulParams) <= 128);
#endif
#endif
