#include "kv/formats.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope::kv {

// ---------------------------------------------------- formats and encodings

std::string_view format_name(Format f) {
  switch (f) {
    case Format::F32: return "f32";
    case Format::F16: return "f16";
    case Format::Q8: return "q8";
    case Format::Q4: return "q4";
    case Format::Kivi2: return "kivi2";
  }
  return "?";
}

std::optional<Format> parse_format(std::string_view name) {
  for (Format f : {Format::F32, Format::F16, Format::Q8, Format::Q4, Format::Kivi2})
    if (name == format_name(f)) return f;
  return std::nullopt;
}

std::string_view format_names() { return "f32 f16 q8 q4 kivi2"; }

double bytes_per_element(Format f) {
  switch (f) {
    case Format::F32: return 4;
    case Format::F16: return 2;
    case Format::Q8: return 1;
    case Format::Q4: return 0.5;
    case Format::Kivi2: return 0.25;
  }
  return 0;
}

Encoding encoding(Format f, Role role) {
  switch (f) {
    case Format::F32: return Encoding::F32;
    case Format::F16: return Encoding::F16;
    case Format::Q8: return Encoding::Q8;
    case Format::Q4: return Encoding::Q4;
    case Format::Kivi2: return role == Role::Keys ? Encoding::Q2Channel : Encoding::Q2;
  }
  return Encoding::F16;
}

std::string_view encoding_name(Encoding e) {
  switch (e) {
    case Encoding::F32: return "f32";
    case Encoding::F16: return "f16";
    case Encoding::Q8: return "q8";
    case Encoding::Q4: return "q4";
    case Encoding::Q2: return "q2 (kivi2 values)";
    case Encoding::Q2Channel: return "q2 per channel (kivi2 keys)";
  }
  return "?";
}

uint32_t asymmetric_levels(Encoding e) {
  switch (e) {
    case Encoding::Q4: return 15;
    case Encoding::Q2:
    case Encoding::Q2Channel: return 3;
    default: return 0;
  }
}

uint32_t default_group_size(uint32_t head_dim) {
  for (uint32_t g : {32u, 16u, 8u})
    if (head_dim % g == 0) return g;
  return head_dim;
}

uint32_t resolve_group_size(uint32_t head_dim, uint32_t requested) {
  if (requested == 0) return default_group_size(head_dim);
  if (head_dim % requested == 0) return requested;
  std::string divisors;
  for (uint32_t d = 2; d <= head_dim; ++d)
    if (head_dim % d == 0) divisors += fmt::format("{}{}", divisors.empty() ? "" : " ", d);
  throw std::invalid_argument(fmt::format(
      "KV group size {} does not divide head_dim {}: a quantization group must cover whole "
      "elements of one head; choose one of: {} (--kv-group)",
      requested, head_dim, divisors));
}

// ---------------------------------------------------------- f16 conversions

namespace {
constexpr float kMinNormalF16 = 6.103515625e-05f;  // 2^-14
constexpr float kMaxF16 = 65504.0f;
// f32(1/L), written out exactly so the shaders use the very same constants.
constexpr float kInv127 = 0.007874015718698501586914062500f;
constexpr float kInv15 = 0.066666670143604278564453125f;
constexpr float kInv3 = 0.3333333432674407958984375f;
static_assert(kInv127 == 1.0f / 127.0f && kInv15 == 1.0f / 15.0f && kInv3 == 1.0f / 3.0f);

float inverse_levels(uint32_t levels) { return levels == 15 ? kInv15 : levels == 3 ? kInv3 : kInv127; }
}  // namespace

uint16_t f16_from_f32(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (b >> 16) & 0x8000u, a = b & 0x7fffffffu;
  if (a >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {  // below 2^-14: an f16 subnormal, in units of 2^-24
    const float units = std::bit_cast<float>(a) * 16777216.0f;  // exact scaling
    return uint16_t(sign | uint32_t(std::nearbyint(units)));    // ties to even
  }
  uint32_t r = a - 0x38000000u;          // exponent bias 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);        // round the dropped 13 bits to nearest even
  return uint16_t(sign | (r >> 13));
}

float f32_from_f16(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = float(mant) * 5.9604644775390625e-08f;  // mant * 2^-24, exact
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t f16_scale_ceil(float x) {
  x = std::clamp(x, kMinNormalF16, kMaxF16);
  const uint32_t b = std::bit_cast<uint32_t>(x);
  uint32_t h = (((b >> 23) - 112u) << 10) | ((b >> 13) & 0x3ffu);  // truncated
  if ((b & 0x1fffu) != 0) ++h;  // a carry into the exponent is still the next f16
  return uint16_t(h);
}

uint16_t f16_min_floor(float x) {
  if (x >= kMinNormalF16) {  // truncate
    const uint32_t b = std::bit_cast<uint32_t>(std::min(x, kMaxF16));
    return uint16_t((((b >> 23) - 112u) << 10) | ((b >> 13) & 0x3ffu));
  }
  if (x >= 0.0f) return 0;
  return uint16_t(0x8000u | f16_scale_ceil(-x));  // -ceil(|x|), at most -2^-14
}

uint32_t round_quotient(float d, float s, uint32_t max_code) {
  if (!(d > 0.0f)) return 0;
  const float guess = std::floor(d / s + 0.5f);  // within one of the answer
  uint32_t n = guess >= float(max_code) ? max_code : uint32_t(guess);
  if (n > 0 && d < (float(n) - 0.5f) * s) --n;
  else if (n < max_code && d >= (float(n) + 0.5f) * s) ++n;
  return n;
}

// ---------------------------------------------------------------- layout

uint32_t TensorLayout::block_rows(uint32_t block) const {
  return std::min(token_group, capacity - block * token_group);
}

TensorLayout tensor_layout(Encoding e, uint32_t n_kv_head, uint32_t capacity, uint32_t head_dim,
                           uint32_t group_size, uint32_t token_group) {
  if (head_dim == 0 || head_dim % 2 != 0)
    throw std::invalid_argument(fmt::format("KV cache: head_dim {} must be even and > 0", head_dim));
  if (capacity == 0) throw std::invalid_argument("KV cache: capacity must be > 0");
  if (token_group > kMaxTokenGroup)
    throw std::invalid_argument(
        fmt::format("KV cache: a kivi2 token group of {} is more than {}", token_group, kMaxTokenGroup));
  TensorLayout L;
  L.encoding = e;
  L.n_kv_head = n_kv_head;
  L.capacity = capacity;
  L.head_dim = head_dim;
  L.group_size = head_dim;
  const uint64_t rows = uint64_t{n_kv_head} * capacity;
  const uint32_t groups = [&] {
    if (e == Encoding::Q8 || e == Encoding::Q4 || e == Encoding::Q2)
      L.group_size = resolve_group_size(head_dim, group_size);
    return head_dim / L.group_size;
  }();
  switch (e) {
    case Encoding::F32: L.code_words = head_dim; break;
    case Encoding::F16: L.code_words = head_dim / 2; break;
    case Encoding::Q8:
      L.code_words = (head_dim + 3) / 4;
      L.param_words = (groups + 1) / 2;
      break;
    case Encoding::Q4:
      L.code_words = (head_dim + 7) / 8;
      L.param_words = groups;
      break;
    case Encoding::Q2:
      L.code_words = (head_dim + 15) / 16;
      L.param_words = groups;
      break;
    case Encoding::Q2Channel: {
      L.token_group = token_group == 0 ? kDefaultTokenGroup : token_group;
      L.code_words = (head_dim + 15) / 16;
      L.n_blocks = (capacity + L.token_group - 1) / L.token_group;
      L.recent_rows = std::min(L.token_group, capacity);
      L.recent_row_words = head_dim / 2;
      L.row_words = L.code_words;
      const uint64_t params_offset = rows * L.code_words;
      const uint64_t recent_offset = params_offset + uint64_t{n_kv_head} * L.n_blocks * head_dim;
      L.total_words = recent_offset + uint64_t{n_kv_head} * L.recent_rows * (head_dim / 2);
      if (L.total_words > 0xffffffffu)
        throw std::invalid_argument("KV cache: one layer's keys exceed 2^32 words; use a smaller context (-c)");
      L.params_offset = uint32_t(params_offset);
      L.recent_offset = uint32_t(recent_offset);
      return L;
    }
  }
  L.row_words = L.code_words + L.param_words;
  L.total_words = rows * L.row_words;
  if (e == Encoding::Q2) {  // kivi2 values: the f16 window of the last token_group positions
    L.token_group = token_group == 0 ? kDefaultTokenGroup : token_group;
    L.recent_rows = std::min(L.token_group, capacity);
    L.recent_row_words = 1 + head_dim / 2;
    const uint64_t recent_offset = L.total_words;
    L.total_words += uint64_t{n_kv_head} * L.recent_rows * L.recent_row_words;
    if (L.total_words <= 0xffffffffu) L.recent_offset = uint32_t(recent_offset);
  }
  if (L.total_words > 0xffffffffu)
    throw std::invalid_argument("KV cache: one layer's keys or values exceed 2^32 words; use a smaller context (-c)");
  return L;
}

// ------------------------------------------------------------ per-token rows

namespace {
struct Asymmetric {
  uint16_t scale_bits, min_bits;
  float scale, min;
};

Asymmetric fit_asymmetric(std::span<const float> x, uint32_t levels) {
  const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
  Asymmetric a;
  a.min_bits = f16_min_floor(std::max(*lo, -kMaxF16));
  a.min = f32_from_f16(a.min_bits);
  a.scale_bits = f16_scale_ceil((*hi - a.min) * inverse_levels(levels));
  a.scale = f32_from_f16(a.scale_bits);
  return a;
}

void put_code(std::span<uint32_t> codes, uint32_t d, uint32_t bits, uint32_t code) {
  const uint32_t per_word = 32 / bits, shift = (d % per_word) * bits;
  const uint32_t mask = ((1u << bits) - 1u) << shift;
  codes[d / per_word] = (codes[d / per_word] & ~mask) | (code << shift & mask);
}

uint32_t get_code(std::span<const uint32_t> codes, uint32_t d, uint32_t bits) {
  const uint32_t per_word = 32 / bits;
  return (codes[d / per_word] >> ((d % per_word) * bits)) & ((1u << bits) - 1u);
}

uint32_t code_bits(Encoding e) {
  switch (e) {
    case Encoding::Q8: return 8;
    case Encoding::Q4: return 4;
    default: return 2;
  }
}

void check_row(const TensorLayout& L, size_t values, size_t words) {
  if (L.encoding == Encoding::Q2Channel)
    throw std::invalid_argument("encode_row/decode_row: kivi2 keys are encoded per block (encode_channel_block)");
  if (values != L.head_dim || words != L.row_words)
    throw std::invalid_argument(fmt::format("KV row: {} values and {} words, expected {} and {}", values,
                                            words, L.head_dim, L.row_words));
}
}  // namespace

void encode_row(const TensorLayout& L, std::span<const float> x, std::span<uint32_t> row) {
  check_row(L, x.size(), row.size());
  std::fill(row.begin(), row.end(), 0u);
  const uint32_t D = L.head_dim, G = L.group_size;
  std::span<uint32_t> codes = row.first(L.code_words), params = row.subspan(L.code_words);
  switch (L.encoding) {
    case Encoding::F32:
      for (uint32_t d = 0; d < D; ++d) row[d] = std::bit_cast<uint32_t>(x[d]);
      return;
    case Encoding::F16:
      for (uint32_t d = 0; d < D; d += 2)
        row[d / 2] = f16_from_f32(x[d]) | uint32_t(f16_from_f32(x[d + 1])) << 16;
      return;
    case Encoding::Q8:
      for (uint32_t g = 0; g < D / G; ++g) {
        const auto group = x.subspan(size_t{g} * G, G);
        float amax = 0.0f;
        for (float v : group) amax = std::max(amax, std::fabs(v));
        const uint16_t scale_bits = f16_scale_ceil(amax * kInv127);
        const float scale = f32_from_f16(scale_bits);
        params[g / 2] |= uint32_t(scale_bits) << (16 * (g % 2));
        for (uint32_t i = 0; i < G; ++i) {
          const uint32_t magnitude = round_quotient(std::fabs(group[i]), scale, 127);
          const int32_t code = group[i] < 0.0f ? -int32_t(magnitude) : int32_t(magnitude);
          put_code(codes, g * G + i, 8, uint32_t(code) & 0xffu);
        }
      }
      return;
    case Encoding::Q4:
    case Encoding::Q2: {
      const uint32_t levels = asymmetric_levels(L.encoding), bits = code_bits(L.encoding);
      for (uint32_t g = 0; g < D / G; ++g) {
        const auto group = x.subspan(size_t{g} * G, G);
        const Asymmetric a = fit_asymmetric(group, levels);
        params[g] = a.scale_bits | uint32_t(a.min_bits) << 16;
        for (uint32_t i = 0; i < G; ++i)
          put_code(codes, g * G + i, bits, round_quotient(group[i] - a.min, a.scale, levels));
      }
      return;
    }
    case Encoding::Q2Channel: return;  // rejected by check_row
  }
}

void decode_row(const TensorLayout& L, std::span<const uint32_t> row, std::span<float> out) {
  check_row(L, out.size(), row.size());
  const uint32_t D = L.head_dim, G = L.group_size;
  std::span<const uint32_t> codes = row.first(L.code_words), params = row.subspan(L.code_words);
  switch (L.encoding) {
    case Encoding::F32:
      for (uint32_t d = 0; d < D; ++d) out[d] = std::bit_cast<float>(row[d]);
      return;
    case Encoding::F16:
      for (uint32_t d = 0; d < D; ++d) out[d] = f32_from_f16(uint16_t(row[d / 2] >> (16 * (d % 2))));
      return;
    case Encoding::Q8:
      for (uint32_t d = 0; d < D; ++d) {
        const uint32_t g = d / G;
        const float scale = f32_from_f16(uint16_t(params[g / 2] >> (16 * (g % 2))));
        out[d] = float(int8_t(get_code(codes, d, 8))) * scale;
      }
      return;
    case Encoding::Q4:
    case Encoding::Q2:
      for (uint32_t d = 0; d < D; ++d) {
        const uint32_t p = params[d / G];
        const float scale = f32_from_f16(uint16_t(p)), min = f32_from_f16(uint16_t(p >> 16));
        out[d] = float(get_code(codes, d, code_bits(L.encoding))) * scale + min;
      }
      return;
    case Encoding::Q2Channel: return;
  }
}

// -------------------------------------------------------- kivi2 key blocks

void encode_channel_block(uint32_t head_dim, uint32_t rows, std::span<const uint32_t> recent,
                          std::span<uint32_t> codes, std::span<uint32_t> params) {
  const uint32_t half_words = head_dim / 2, code_words = (head_dim + 15) / 16;
  if (recent.size() < size_t{rows} * half_words || codes.size() < size_t{rows} * code_words ||
      params.size() < head_dim)
    throw std::invalid_argument("encode_channel_block: spans too small for the block");
  std::fill_n(codes.begin(), size_t{rows} * code_words, 0u);
  std::vector<float> channel(rows);
  for (uint32_t d = 0; d < head_dim; ++d) {
    for (uint32_t r = 0; r < rows; ++r)
      channel[r] = f32_from_f16(uint16_t(recent[size_t{r} * half_words + d / 2] >> (16 * (d % 2))));
    const Asymmetric a = fit_asymmetric(channel, 3);
    params[d] = a.scale_bits | uint32_t(a.min_bits) << 16;
    for (uint32_t r = 0; r < rows; ++r)
      put_code(codes.subspan(size_t{r} * code_words, code_words), d, 2,
               round_quotient(channel[r] - a.min, a.scale, 3));
  }
}

void decode_channel_row(uint32_t head_dim, std::span<const uint32_t> code_row,
                        std::span<const uint32_t> params, std::span<float> out) {
  for (uint32_t d = 0; d < head_dim; ++d) {
    const float scale = f32_from_f16(uint16_t(params[d])), min = f32_from_f16(uint16_t(params[d] >> 16));
    out[d] = float(get_code(code_row, d, 2)) * scale + min;
  }
}

// ------------------------------------------------------------- TensorImage

TensorImage::TensorImage(const TensorLayout& layout) : layout_(layout), words_(layout.total_words, 0u) {}

void TensorImage::write(uint32_t kv_head, std::span<const int32_t> slots, std::span<const float> x,
                        int32_t open_block) {
  const TensorLayout& L = layout_;
  const uint32_t D = L.head_dim;
  if (x.size() != slots.size() * D)
    throw std::invalid_argument("TensorImage::write: x must hold head_dim values per slot");
  std::vector<int32_t> row_token(L.token_group, -1);  // kivi2 keys: the call's token of each row of the block
  for (size_t t = 0; t < slots.size(); ++t) {
    const int32_t slot = slots[t];
    if (slot < 0 || uint32_t(slot) >= L.capacity) continue;
    if (L.encoding != Encoding::Q2Channel) {
      encode_row(L, x.subspan(t * D, D), std::span(words_).subspan(L.row_offset(kv_head, slot), L.row_words));
      continue;
    }
    // kivi2 keys: a completed block is quantized after its last token of this
    // call (tokens of one block are consecutive in a call: the slot table
    // fills the open block before opening another).
    const uint32_t block = uint32_t(slot) / L.token_group;
    row_token[uint32_t(slot) % L.token_group] = int32_t(t);
    const bool last_of_block = t + 1 == slots.size() || slots[t + 1] < 0 ||
                               uint32_t(slots[t + 1]) / L.token_group != block;
    if (!last_of_block) continue;
    if (int32_t(block) != open_block) seal(kv_head, block, row_token, x);
    std::fill(row_token.begin(), row_token.end(), -1);
  }
}

void TensorImage::seal(uint32_t kv_head, uint32_t block, std::span<const int32_t> row_token,
                       std::span<const float> x) {
  const TensorLayout& L = layout_;
  const uint32_t D = L.head_dim, rows = L.block_rows(block), half = D / 2;
  // The block's rows as f16 pairs: the call's keys rounded, the rest from the window.
  std::vector<uint32_t> pairs(size_t{rows} * half);
  const uint32_t* window = words_.data() + L.recent_offset + uint64_t{kv_head} * L.recent_rows * L.recent_row_words;
  for (uint32_t r = 0; r < rows; ++r)
    for (uint32_t i = 0; i < half; ++i)
      pairs[size_t{r} * half + i] =
          row_token[r] < 0 ? window[size_t{r} * L.recent_row_words + i]
                           : f16_from_f32(x[size_t(row_token[r]) * D + 2 * i]) |
                                 uint32_t(f16_from_f32(x[size_t(row_token[r]) * D + 2 * i + 1])) << 16;
  std::span<uint32_t> all(words_);
  encode_channel_block(D, rows, pairs, all.subspan(L.row_offset(kv_head, block * L.token_group), size_t{rows} * L.code_words),
                       all.subspan(L.params_offset + (uint64_t{kv_head} * L.n_blocks + block) * D, D));
}

void TensorImage::write_window(uint32_t kv_head, std::span<const int32_t> slots, std::span<const int32_t> positions,
                               std::span<const float> x, int32_t open_block) {
  const TensorLayout& L = layout_;
  const uint32_t D = L.head_dim;
  if (x.size() != slots.size() * D || positions.size() != slots.size())
    throw std::invalid_argument("TensorImage::write_window: a slot, a position and head_dim values per token");
  auto put_pairs = [&](uint32_t* w, size_t t) {
    for (uint32_t d = 0; d < D; d += 2)
      w[d / 2] = f16_from_f32(x[t * D + d]) | uint32_t(f16_from_f32(x[t * D + d + 1])) << 16;
  };
  if (L.encoding == Encoding::Q2Channel) {
    for (size_t t = 0; t < slots.size(); ++t) {
      const int32_t slot = slots[t];
      if (slot < 0 || uint32_t(slot) >= L.capacity || int32_t(uint32_t(slot) / L.token_group) != open_block) continue;
      put_pairs(words_.data() + L.recent_offset +
                    (uint64_t{kv_head} * L.recent_rows + uint32_t(slot) % L.token_group) * L.recent_row_words,
                t);
    }
  } else if (L.encoding == Encoding::Q2) {
    const size_t n = positions.size(), first = n - std::min<size_t>(n, L.recent_rows);
    for (size_t t = first; t < n; ++t) {
      const uint32_t row = uint32_t(positions[t]) % L.recent_rows;
      uint32_t* w = words_.data() + L.recent_offset + (uint64_t{kv_head} * L.recent_rows + row) * L.recent_row_words;
      w[0] = uint32_t(positions[t]);
      put_pairs(w + 1, t);
    }
  }
}

void TensorImage::read_for_query(uint32_t kv_head, uint32_t slot, int32_t slot_position, const Query& q,
                                 std::span<float> out) const {
  const TensorLayout& L = layout_;
  const uint32_t D = L.head_dim;
  const int64_t step_row = int64_t{slot_position} - q.step_first;
  const bool in_step = step_row >= 0 && uint64_t(step_row) < q.step_rows.size() / D;
  auto from_step = [&] {
    for (uint32_t d = 0; d < D; ++d) out[d] = f32_from_f16(f16_from_f32(q.step_rows[size_t(step_row) * D + d]));
  };
  auto from_pairs = [&](const uint32_t* pairs) {
    for (uint32_t d = 0; d < D; ++d) out[d] = f32_from_f16(uint16_t(pairs[d / 2] >> (16 * (d % 2))));
  };
  if (L.encoding == Encoding::Q2Channel && int32_t(slot / L.token_group) == q.query_block) {
    if (in_step) return from_step();
    return from_pairs(words_.data() + L.recent_offset +
                      (uint64_t{kv_head} * L.recent_rows + slot % L.token_group) * L.recent_row_words);
  }
  if (L.encoding == Encoding::Q2 && int64_t{q.position} - slot_position < int64_t{L.recent_rows}) {
    if (in_step) return from_step();
    const uint32_t* w = words_.data() + L.recent_offset +
                        (uint64_t{kv_head} * L.recent_rows + uint32_t(slot_position) % L.recent_rows) * L.recent_row_words;
    if (int32_t(w[0]) == slot_position) return from_pairs(w + 1);
  }
  read(kv_head, slot, q.open_block, out);
}

void TensorImage::read(uint32_t kv_head, uint32_t slot, int32_t open_block, std::span<float> out) const {
  const TensorLayout& L = layout_;
  const uint32_t D = L.head_dim;
  if (L.encoding != Encoding::Q2Channel) {
    decode_row(L, std::span(words_).subspan(L.row_offset(kv_head, slot), L.row_words), out);
    return;
  }
  const uint32_t block = slot / L.token_group;
  if (int32_t(block) == open_block) {
    const uint32_t* recent =
        words_.data() + L.recent_offset + (uint64_t{kv_head} * L.recent_rows + slot % L.token_group) * L.recent_row_words;
    for (uint32_t d = 0; d < D; ++d) out[d] = f32_from_f16(uint16_t(recent[d / 2] >> (16 * (d % 2))));
    return;
  }
  decode_channel_row(D, std::span(words_).subspan(L.row_offset(kv_head, slot), L.code_words),
                     std::span(words_).subspan(L.params_offset + (uint64_t{kv_head} * L.n_blocks + block) * D, D),
                     out);
}

}  // namespace kvscope::kv
