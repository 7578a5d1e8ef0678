// KV cache storage formats: what each stores, how one layer's K or V tensor
// is laid out on the device, and the CPU reference of every encoding (the
// oracle the kv_write and attention shaders are held against, bit for bit).
//
// [SECTION] formats and encodings
// [SECTION] f16 conversions (exact, shared with shaders/common/kv.glsl)
// [SECTION] device layout of one tensor
// [SECTION] per-token rows: encode / decode
// [SECTION] kivi2 keys: per-channel blocks
// [SECTION] TensorImage: the CPU mirror of one layer's tensor
//
// Rounding, specified so the GPU reproduces the CPU's codes exactly:
//   * f16 (and kivi2's recent window): f32 -> f16 round to nearest even.
//   * q8, per group of `group_size` elements along head_dim (symmetric):
//       scale s = the smallest f16 >= amax * f32(1/127), clamped to
//       [2^-14, 65504] (normal f16 only: no device flushes them);
//       code   = round-half-away-from-zero(x / s), computed exactly (as if in
//       infinite precision), clamped to [-127, 127];  x' = code * s.
//   * q4 / 2-bit (asymmetric, L = 15 or 3 levels above the minimum):
//       min m = the largest f16 <= min(x) that is zero or normal, clamped to
//       >= -65504; s = the smallest f16 >= (max(x) - m) * f32(1/L), clamped
//       to [2^-14, 65504]; code = round-half-up((x - m) / s) exactly, clamped
//       to [0, L];  x' = code * s + m (the product is exact, so an FMA and a
//       multiply-then-add give the same x').
//   Exact rounding works because s has 11 significant bits and code +- 0.5 at
//   most 9, so (code + 0.5) * s is exact in f32: the shader and the CPU take a
//   guess from x / s (any division) and correct it by comparing against those
//   exact products. Error: |x - x'| <= s / 2 (+ one f32 rounding for q4/2-bit).
//   Inputs beyond +-65504 saturate; NaN/inf inputs are unspecified.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace kvscope::kv {

// ---------------------------------------------------- [SECTION] formats and encodings

// What a person chooses, independently for keys and for values (--kv-k/--kv-v).
//   f32    reference
//   f16    default
//   q8     int8 symmetric, per token, groups along head_dim, f16 scale
//   q4     int4 asymmetric, per token, groups along head_dim, f16 scale + min
//   kivi2  2-bit (KIVI). Keys: per channel over blocks of `token_group`
//          consecutive slots, f16 scale + min per (block, channel); the block
//          being filled stays in an f16 window of token_group rows and is
//          quantized by the write that completes it. Values: per token,
//          groups along head_dim like q4, and the last token_group positions
//          also in an f16 window (KIVI's full-precision residual: attention
//          leans hardest on the newest tokens). A query reads its own block's
//          keys and the values of the token_group positions up to its own in
//          f16, in a prefill as in generation (see TensorImage::read_for_query).
enum class Format : uint8_t { F32, F16, Q8, Q4, Kivi2 };

std::string_view format_name(Format f);
std::optional<Format> parse_format(std::string_view name);  // "f32", "f16", "q8", "q4", "kivi2"
std::string_view format_names();                            // "f32 f16 q8 q4 kivi2"
// Bits of one element's code (32, 16, 8, 4, 2): scales, minimums and kivi2's
// f16 window are not counted — TensorLayout / KvCache::bytes_per_token are
// what the device holds.
double bytes_per_element(Format f);

enum class Role : uint8_t { Keys, Values };

// How one tensor's elements are encoded: a Format names one encoding for both
// roles except kivi2 (Q2Channel for keys, Q2 for values). The shader variants
// are per encoding.
enum class Encoding : uint8_t { F32, F16, Q8, Q4, Q2, Q2Channel };
Encoding encoding(Format f, Role role);
std::string_view encoding_name(Encoding e);
// Quantization levels above the minimum (q4: 15, 2-bit: 3); 0 for f32/f16/q8.
uint32_t asymmetric_levels(Encoding e);

// The default group along head_dim: the largest of 32, 16, 8 dividing
// head_dim, else the whole head (48 -> 16, 64 -> 32, 36 -> 36).
uint32_t default_group_size(uint32_t head_dim);
// `requested` 0 means the default; a group that does not divide head_dim
// throws std::invalid_argument naming the divisors to choose from.
uint32_t resolve_group_size(uint32_t head_dim, uint32_t requested);
// kivi2: slots per per-channel key block, rows of the keys' f16 window and
// positions in the values' f16 window (KIVI's residual length).
inline constexpr uint32_t kDefaultTokenGroup = 32;
inline constexpr uint32_t kMaxTokenGroup = 256;

// ------------------------------- [SECTION] f16 conversions (exact, shared with kv.glsl)

uint16_t f16_from_f32(float x);  // round to nearest even (subnormals, inf, NaN kept)
float f32_from_f16(uint16_t h);  // exact
// Directed roundings onto normal f16 values (see the rounding note above).
uint16_t f16_scale_ceil(float x);  // smallest f16 >= x, x clamped to [2^-14, 65504]
uint16_t f16_min_floor(float x);   // largest zero-or-normal f16 <= x, x clamped to >= -65504
// round-half-up(d / s) for d >= 0, computed exactly, clamped to [0, max_code];
// d <= 0 gives 0. s must be a normal f16 value.
uint32_t round_quotient(float d, float s, uint32_t max_code);

// --------------------------------------------- [SECTION] device layout of one tensor
//
// One layer's K (or V) is one buffer of 32-bit words (no 8/16-bit storage
// features needed). Per-token encodings store one row per (kv_head, slot):
//   row (h, s) at word (h * capacity + s) * row_words:
//     code_words  codes of head_dim elements, element d at
//                 F32  word d
//                 F16  half d%2 of word d/2 (low half first)
//                 Q8   byte d%4 of word d/4 (two's complement, little-endian)
//                 Q4   nibble d%8 of word d/8 (low nibble first)
//                 Q2   bits 2*(d%16) of word d/16
//                 padded with zero bits to a whole word
//     param_words Q8: the f16 scale of group g in half g%2 of word g/2 (a
//                 row with an odd group count ends with an unused half);
//                 Q4/Q2: word g = scale | min << 16 (f16 bits)
// Q2 (kivi2 values) adds, after the rows, the values' f16 window:
//   recent  [n_kv_head][recent_rows][1 + head_dim/2]: word 0 the position
//           held (a tag: the row is read only for that position), then f16
//           pairs; position p in row p % recent_rows, recent_rows =
//           min(token_group, capacity). Written after attention, from the
//           step's last recent_rows tokens (TensorImage::write_window), so a
//           step's queries still find the positions before the step there.
// Q2Channel (kivi2 keys) has three regions:
//   codes   [n_kv_head][capacity][code_words] as Q2 above (no params in rows)
//   params  [n_kv_head][n_blocks][head_dim] words, scale | min << 16 of each
//           channel of block b = slots [b*token_group, min((b+1)*token_group, capacity))
//   recent  [n_kv_head][recent_rows][head_dim/2] f16 pairs: the open block's
//           rows, slot s in row s % token_group
// Which block of a head is open (its rows live in `recent`) is the slot
// table's open_block() (kv/cache.h), mirrored on the device.
struct TensorLayout {
  Encoding encoding = Encoding::F16;
  uint32_t n_kv_head = 0, capacity = 0, head_dim = 0;
  uint32_t group_size = 0;   // along head_dim: Q8/Q4/Q2 (head_dim otherwise)
  uint32_t token_group = 1;  // Q2Channel: slots per block; Q2: positions in the window; 1 otherwise
  uint32_t code_words = 0;   // per row
  uint32_t param_words = 0;  // per row (per-token encodings)
  uint32_t row_words = 0;    // code_words + param_words
  uint32_t n_blocks = 0;     // Q2Channel: ceil(capacity / token_group)
  uint32_t recent_rows = 0;  // Q2Channel, Q2: min(token_group, capacity)
  uint32_t params_offset = 0;  // Q2Channel: words from the start
  uint32_t recent_offset = 0;  // Q2Channel, Q2: words from the start
  uint32_t recent_row_words = 0;  // Q2Channel: head_dim/2; Q2: 1 + head_dim/2 (the tag)
  uint64_t total_words = 0;

  uint64_t bytes() const { return total_words * 4; }
  uint64_t row_offset(uint32_t kv_head, uint32_t slot) const {
    return (uint64_t{kv_head} * capacity + slot) * row_words;
  }
  uint32_t block_rows(uint32_t block) const;  // Q2Channel: slots in `block` (the last may be short)
};
// Throws std::invalid_argument for an odd head_dim, a group that does not
// divide it or a token_group above kMaxTokenGroup; group_size 0 and
// token_group 0 mean the defaults.
TensorLayout tensor_layout(Encoding e, uint32_t n_kv_head, uint32_t capacity, uint32_t head_dim,
                           uint32_t group_size, uint32_t token_group);

// ------------------------------------------- [SECTION] per-token rows: encode / decode
// x and out have head_dim elements, row has row_words words. Not for Q2Channel.
void encode_row(const TensorLayout& layout, std::span<const float> x, std::span<uint32_t> row);
void decode_row(const TensorLayout& layout, std::span<const uint32_t> row, std::span<float> out);

// ---------------------------------------------- [SECTION] kivi2 keys: per-channel blocks
// Quantizes `rows` f16 rows of the recent window (rows x head_dim/2 words)
// per channel: codes gets rows x code_words words, params head_dim words.
void encode_channel_block(uint32_t head_dim, uint32_t rows, std::span<const uint32_t> recent,
                          std::span<uint32_t> codes, std::span<uint32_t> params);
// One row of a sealed block, dequantized.
void decode_channel_row(uint32_t head_dim, std::span<const uint32_t> code_row,
                        std::span<const uint32_t> params, std::span<float> out);

// ------------------------------- [SECTION] TensorImage: the CPU mirror of one layer's tensor
//
// Words exactly as kv_write leaves them on the device, for the same writes.
// Words never written stay 0 here (undefined on the device: compare written
// rows only).
class TensorImage {
 public:
  explicit TensorImage(const TensorLayout& layout);
  const TensorLayout& layout() const { return layout_; }
  std::span<const uint32_t> words() const { return words_; }

  // One forward call's tokens for one kv head, in order: x is [n][head_dim],
  // slots[i] the slot of token i (< 0: not stored in this head); before
  // attention, as rope_kv_write and kivi_key_write's phase 0.
  // Q2Channel: `open_block` is the head's open block after the reserve (-1:
  // none). A block that received tokens and is not open is complete and is
  // quantized after its last token of the call, from its rows: the call's
  // keys rounded to f16 and, for rows of earlier calls, the f16 window. The
  // window is left as it was (write_window fills it).
  void write(uint32_t kv_head, std::span<const int32_t> slots, std::span<const float> x,
             int32_t open_block = -1);
  // After attention, the same call's tokens into the f16 windows: kivi2 keys
  // (Q2Channel) the rows of the open block; kivi2 values (Q2) the last
  // recent_rows positions, row position % recent_rows, tagged with the
  // position. Other encodings have no window: nothing is written.
  void write_window(uint32_t kv_head, std::span<const int32_t> slots, std::span<const int32_t> positions,
                    std::span<const float> x, int32_t open_block = -1);

  // What a query reads, the attention shader's rule. `step_first`/`step_rows`:
  // the positions and rows (head_dim each, this head's k or v as the model
  // computed them) of the step being attended, if any.
  struct Query {
    int32_t position = 0;      // the query's
    int32_t open_block = -1;   // kivi2 keys: the head's open block after the step's reserve
    int32_t query_block = -1;  // kivi2 keys: the block of the query's own slot (-1: not stored;
                               // without a step: the open block)
    int32_t step_first = 0;    // position of step_rows' first row
    std::span<const float> step_rows;
  };
  // kivi2 keys: a slot of the query's own block is read in f16, from the
  // step's row if it is one of the step's tokens, else from the window; any
  // other slot as read(). kivi2 values: a slot whose position is less than
  // recent_rows before the query's is read in f16 — from the step's row, else
  // from the window row tagged with that position if there is one — else as
  // read(). Other encodings: read(). Step rows are rounded to f16, as the
  // windows hold them. So a prefill reads what the same tokens one at a time
  // would read (KIVI's full-precision residual).
  void read_for_query(uint32_t kv_head, uint32_t slot, int32_t slot_position, const Query& q,
                      std::span<float> out) const;
  // What is stored for (kv_head, slot), ignoring the values' window: kivi2
  // keys in the open block from the key window, sealed blocks dequantized.
  void read(uint32_t kv_head, uint32_t slot, int32_t open_block, std::span<float> out) const;

 private:
  void seal(uint32_t kv_head, uint32_t block, std::span<const int32_t> row_token, std::span<const float> x);
  TensorLayout layout_;
  std::vector<uint32_t> words_;
};

}  // namespace kvscope::kv
