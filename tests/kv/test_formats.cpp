// The CPU reference of every KV storage format (kv/formats.h): exact f16
// roundings, bit-exact codes where the rounding is specified (ties, clamps),
// error bounds from the bit width over odd shapes and group sizes that do not
// divide 32, device layouts, and the kivi2 key blocks through the slot table.
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kv/cache.h"
#include "kv/formats.h"

using namespace kvscope;
using kv::Encoding;

namespace {

std::vector<float> random_row(std::mt19937& rng, uint32_t n, float spread, bool outliers) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  if (outliers && n > 3) {  // a few large channels, as real keys have
    x[1] *= 20.0f;
    x[n - 2] = -std::fabs(x[n - 2]) * 12.0f - 3.0f;
  }
  return x;
}

// The f16 values just below and above x (x a normal f16 value > 0).
float f16_next_up(uint16_t h) { return kv::f32_from_f16(uint16_t(h + 1)); }

// Largest |x - x'| allowed for one group: half a step, plus one f32 rounding
// of x' for the asymmetric formats.
float group_bound(float scale, float magnitude) { return scale * 0.5f + magnitude * 1.2e-7f + 1e-30f; }

// Checks one encoded row of a per-token encoding against its input: every
// element within half a step of its group's scale, and the scale no larger
// than the range needs (to f16 rounding).
void check_row_bounds(const kv::TensorLayout& L, std::span<const float> x, std::span<const uint32_t> row) {
  std::vector<float> y(L.head_dim);
  kv::decode_row(L, row, y);
  const uint32_t G = L.group_size, levels = kv::asymmetric_levels(L.encoding);
  for (uint32_t g = 0; g < L.head_dim / G; ++g) {
    float lo = x[g * G], hi = x[g * G], amax = 0.0f;
    for (uint32_t i = 0; i < G; ++i) {
      lo = std::min(lo, x[g * G + i]);
      hi = std::max(hi, x[g * G + i]);
      amax = std::max(amax, std::fabs(x[g * G + i]));
    }
    const uint32_t params = row[L.code_words + (L.encoding == Encoding::Q8 ? g / 2 : g)];
    const float scale = kv::f32_from_f16(uint16_t(params >> (L.encoding == Encoding::Q8 ? 16 * (g % 2) : 0)));
    const float needed = levels ? (hi - lo) / float(levels) : amax / 127.0f;
    // ceil to f16 (2^-10 relative), the floored min (an f16 step of lo), the 2^-14 floor
    CHECK(scale <= needed * (1.0f + 2.0f / 1024) + std::fabs(lo) / 1024 / float(std::max(levels, 1u)) + 6.2e-5f);
    for (uint32_t i = 0; i < G; ++i) {
      const uint32_t d = g * G + i;
      INFO("element " << d << " of " << L.head_dim << ", group " << G << ", " << kv::encoding_name(L.encoding));
      CHECK(std::fabs(x[d] - y[d]) <= group_bound(scale, std::fabs(x[d])));
    }
  }
}

}  // namespace

TEST_CASE("kv formats: names, parsing, the sweep list") {
  CHECK(kv::format_names() == "f32 f16 q8 q4 kivi2");
  std::string joined;
  for (kv::Format f : kv::all_formats()) {
    CHECK(kv::parse_format(kv::format_name(f)) == f);
    joined += (joined.empty() ? "" : " ") + std::string(kv::format_name(f));
  }
  CHECK(joined == kv::format_names());
  CHECK_FALSE(kv::parse_format("q2").has_value());
  CHECK(kv::encoding(kv::Format::Kivi2, kv::Role::Keys) == Encoding::Q2Channel);
  CHECK(kv::encoding(kv::Format::Kivi2, kv::Role::Values) == Encoding::Q2);
  CHECK(kv::encoding(kv::Format::Q8, kv::Role::Keys) == Encoding::Q8);
}

TEST_CASE("kv formats: default group size and groups that do not divide head_dim") {
  CHECK(kv::default_group_size(48) == 16);
  CHECK(kv::default_group_size(64) == 32);
  CHECK(kv::default_group_size(128) == 32);
  CHECK(kv::default_group_size(40) == 8);
  CHECK(kv::default_group_size(36) == 36);
  CHECK(kv::default_group_size(50) == 50);
  CHECK(kv::resolve_group_size(48, 0) == 16);
  CHECK(kv::resolve_group_size(48, 24) == 24);
  CHECK(kv::resolve_group_size(48, 12) == 12);
  try {
    kv::resolve_group_size(48, 20);
    FAIL("a group of 20 with head_dim 48 must be refused");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    CHECK(what.find("20 does not divide head_dim 48") != std::string::npos);
    CHECK(what.find("12 16 24 48") != std::string::npos);
    CHECK(what.find("--kv-group") != std::string::npos);
  }
  CHECK_THROWS_AS(kv::tensor_layout(Encoding::Q4, 1, 8, 48, 32, 0), std::invalid_argument);
  CHECK_THROWS_AS(kv::tensor_layout(Encoding::F16, 1, 8, 47, 0, 0), std::invalid_argument);
}

TEST_CASE("kv formats: f16 conversions, round to nearest even and the directed roundings") {
  // Round to nearest even at a tie: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  CHECK(kv::f16_from_f32(1.0f + 1.0f / 2048) == 0x3c00);
  CHECK(kv::f16_from_f32(1.0f + 3.0f / 2048) == 0x3c02);
  CHECK(kv::f16_from_f32(65504.0f) == 0x7bff);
  CHECK(kv::f16_from_f32(65520.0f) == 0x7c00);
  CHECK(kv::f16_from_f32(-2.0f) == 0xc000);
  CHECK(kv::f16_from_f32(5.9604645e-08f) == 0x0001);  // smallest subnormal
  CHECK(std::isnan(kv::f32_from_f16(kv::f16_from_f32(NAN))));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-20.0f, 17.0f);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::exp2(exponent(rng)) * (i % 2 ? -1.0f : 1.0f);
    const uint16_t h = kv::f16_from_f32(x);
    if (std::fabs(x) < 65504.0f) {  // nearest: no f16 neighbour is closer
      const float y = kv::f32_from_f16(h);
      const float up = kv::f32_from_f16(uint16_t(h + 1)), down = kv::f32_from_f16(uint16_t(h - 1));
      if ((h & 0x7fff) != 0 && (h & 0x7fff) < 0x7bff) {
        CHECK(std::fabs(y - x) <= std::fabs(up - x));
        CHECK(std::fabs(y - x) <= std::fabs(down - x));
      }
    }
    const float a = std::fabs(x);
    const uint16_t c = kv::f16_scale_ceil(a);
    const float clamped = std::clamp(a, 6.103515625e-05f, 65504.0f);
    CHECK(kv::f32_from_f16(c) >= clamped);
    CHECK((c == 0x0400 || kv::f32_from_f16(uint16_t(c - 1)) < clamped));
    const uint16_t m = kv::f16_min_floor(x);
    const float mv = kv::f32_from_f16(m);
    if (x >= -65504.0f) CHECK(mv <= x);
    CHECK(((m & 0x7c00) != 0 || (m & 0x7fff) == 0));  // zero or normal
    if (x >= 6.103515625e-05f && x < 65504.0f) CHECK(f16_next_up(m) > x);
  }
  CHECK(kv::f16_min_floor(-1e-6f) == 0x8400);  // -2^-14: the nearest normal below
  CHECK(kv::f16_min_floor(1e-6f) == 0x0000);
  CHECK(kv::f16_scale_ceil(0.0f) == 0x0400);
  CHECK(kv::f16_scale_ceil(1e9f) == 0x7bff);
}

TEST_CASE("kv formats: round_quotient is exact round-half-up, including at ties") {
  const float s = kv::f32_from_f16(kv::f16_scale_ceil(0.0371f));
  for (uint32_t n = 0; n < 127; ++n) {
    const float tie = (float(n) + 0.5f) * s;  // exact
    CHECK(kv::round_quotient(tie, s, 127) == n + 1);
    CHECK(kv::round_quotient(std::nextafter(tie, 0.0f), s, 127) == n);
    CHECK(kv::round_quotient(float(n) * s, s, 127) == n);
  }
  CHECK(kv::round_quotient(1e30f, s, 15) == 15);
  CHECK(kv::round_quotient(-1.0f, s, 15) == 0);
  CHECK(kv::round_quotient(0.0f, s, 3) == 0);
}

TEST_CASE("kv formats: q8 codes at ties round away from zero, bit for bit") {
  const kv::TensorLayout L = kv::tensor_layout(Encoding::Q8, 1, 1, 48, 16, 0);
  CHECK(L.code_words == 12);
  CHECK(L.param_words == 2);  // 3 f16 scales, one half unused
  // Group 0 fixes its scale with amax = 127 * 0.25 (0.25 is an f16, and
  // 31.75 * f32(1/127) rounds to no more than the next f16 up).
  std::vector<float> x(48, 0.0f);
  x[0] = 31.75f;
  std::vector<uint32_t> row(L.row_words);
  kv::encode_row(L, x, row);
  const float s = kv::f32_from_f16(uint16_t(row[12]));
  CHECK(s >= 0.25f);
  CHECK(s <= 0.25f + 1.0f / 4096);
  // Now ties and near-ties in the same group, both signs.
  x[1] = 2.5f * s;                       // tie -> 3
  x[2] = -2.5f * s;                      // tie -> -3
  x[3] = std::nextafter(2.5f * s, 0.f);  // just below -> 2
  x[4] = -std::nextafter(0.5f * s, 0.f); // -> 0 (no negative zero code)
  x[5] = 0.5f * s;                       // tie -> 1
  x[6] = -126.5f * s;                    // tie -> -127
  kv::encode_row(L, x, row);
  CHECK(kv::f32_from_f16(uint16_t(row[12])) == s);  // same amax, same scale
  auto code = [&](uint32_t d) { return int8_t(row[d / 4] >> (8 * (d % 4))); };
  CHECK(code(0) == 127);
  CHECK(code(1) == 3);
  CHECK(code(2) == -3);
  CHECK(code(3) == 2);
  CHECK(code(4) == 0);
  CHECK(code(5) == 1);
  CHECK(code(6) == -127);
  // The other groups are zero: the smallest normal scale, zero codes.
  CHECK(uint16_t(row[12] >> 16) == 0x0400);
  CHECK(uint16_t(row[13]) == 0x0400);
  CHECK(uint16_t(row[13] >> 16) == 0);  // the unused half
  for (uint32_t d = 16; d < 48; ++d) CHECK(code(d) == 0);
}

TEST_CASE("kv formats: q4 and 2-bit codes, min and scale bit for bit") {
  for (Encoding e : {Encoding::Q4, Encoding::Q2}) {
    const uint32_t levels = kv::asymmetric_levels(e), bits = e == Encoding::Q4 ? 4 : 2;
    const kv::TensorLayout L = kv::tensor_layout(e, 1, 1, 12, 12, 0);
    // min -1.5 and max -1.5 + levels * 0.5 are f16 values: s = 0.5 exactly
    // (f32(1/L) * range rounds to 0.5 or just above, ceil then lands on 0.5
    // only if it is not above; so read s back and build ties from it).
    std::vector<float> x(12, 0.0f);
    x[0] = -1.5f;
    x[1] = -1.5f + float(levels) * 0.5f;
    std::vector<uint32_t> row(L.row_words);
    kv::encode_row(L, x, row);
    const float s = kv::f32_from_f16(uint16_t(row[L.code_words]));
    CHECK(kv::f32_from_f16(uint16_t(row[L.code_words] >> 16)) == -1.5f);
    CHECK(s >= 0.5f);
    CHECK(s <= 0.5f + 1.0f / 1024);
    const float m = -1.5f;
    x[2] = m + 0.5f * s;                        // tie -> 1
    x[3] = std::nextafter(m + 0.5f * s, -9.f);  // just below -> 0
    x[4] = m + 1.5f * s;                        // tie -> 2
    kv::encode_row(L, x, row);
    auto code = [&](uint32_t d) { return (row[d * bits / 32] >> (d * bits % 32)) & ((1u << bits) - 1); };
    CHECK(code(0) == 0);
    CHECK(code(1) == levels);
    CHECK(code(2) == 1);
    CHECK(code(3) == 0);
    CHECK(code(4) == std::min(2u, levels));
    std::vector<float> y(12);
    kv::decode_row(L, row, y);
    CHECK(y[0] == -1.5f);
    CHECK(y[2] == m + s);
  }
}

TEST_CASE("kv formats: per-token rows within half a step, head_dim 48/64/128, groups 8..128") {
  std::mt19937 rng(42);
  for (uint32_t head_dim : {48u, 64u, 128u, 50u}) {
    for (uint32_t group : {8u, 12u, 16u, 24u, 32u, 48u, 64u, 128u, 50u, 10u}) {
      if (head_dim % group != 0) continue;
      for (Encoding e : {Encoding::Q8, Encoding::Q4, Encoding::Q2}) {
        const kv::TensorLayout L = kv::tensor_layout(e, 1, 1, head_dim, group, 0);
        CAPTURE(head_dim);
        CAPTURE(group);
        for (int trial = 0; trial < 20; ++trial) {
          const float spread = trial % 4 == 0 ? 1e-4f : trial % 4 == 1 ? 300.0f : 1.0f;
          const auto x = random_row(rng, head_dim, spread, trial % 2 == 0);
          std::vector<uint32_t> row(L.row_words);
          kv::encode_row(L, x, row);
          check_row_bounds(L, x, row);
        }
      }
    }
  }
}

TEST_CASE("kv formats: constant, zero and out-of-f16-range rows") {
  for (Encoding e : {Encoding::Q8, Encoding::Q4, Encoding::Q2}) {
    const kv::TensorLayout L = kv::tensor_layout(e, 1, 1, 48, 16, 0);
    std::vector<uint32_t> row(L.row_words);
    std::vector<float> y(48);
    for (float c : {0.0f, 3.25f, -7.0f, 1000.3f}) {
      std::vector<float> x(48, c);
      kv::encode_row(L, x, row);
      kv::decode_row(L, row, y);
      for (float v : y) CHECK(std::fabs(v - c) <= std::fabs(c) * 1e-3f + 1e-4f);
    }
    std::vector<float> huge(48, 1e6f);
    huge[3] = -1e6f;
    kv::encode_row(L, huge, row);
    kv::decode_row(L, row, y);
    for (float v : y) {
      CHECK(std::isfinite(v));
      CHECK(std::fabs(v) <= 65504.0f * 128);  // saturated, never inf
    }
  }
}

TEST_CASE("kv formats: f32 and f16 rows are exact / round to nearest") {
  const kv::TensorLayout L32 = kv::tensor_layout(Encoding::F32, 1, 1, 48, 0, 0);
  const kv::TensorLayout L16 = kv::tensor_layout(Encoding::F16, 1, 1, 48, 0, 0);
  std::mt19937 rng(3);
  const auto x = random_row(rng, 48, 2.0f, true);
  std::vector<uint32_t> r32(L32.row_words), r16(L16.row_words);
  std::vector<float> y(48);
  kv::encode_row(L32, x, r32);
  kv::decode_row(L32, r32, y);
  CHECK(y == x);
  kv::encode_row(L16, x, r16);
  kv::decode_row(L16, r16, y);
  for (uint32_t d = 0; d < 48; ++d) CHECK(y[d] == kv::f32_from_f16(kv::f16_from_f32(x[d])));
}

TEST_CASE("kv formats: bytes per token per head at head_dim 48") {
  struct Case {
    Encoding e;
    uint32_t group;
    uint64_t bytes;  // one head, one slot (kivi2 keys: 256 slots, whole buffer / 256)
  };
  for (const Case& c : {Case{Encoding::F32, 0, 192}, Case{Encoding::F16, 0, 96}, Case{Encoding::Q8, 16, 56},
                        Case{Encoding::Q8, 48, 52}, Case{Encoding::Q8, 24, 52}, Case{Encoding::Q8, 8, 60},
                        Case{Encoding::Q4, 16, 36}, Case{Encoding::Q4, 48, 28}, Case{Encoding::Q4, 8, 48},
                        Case{Encoding::Q2, 16, 24}, Case{Encoding::Q2, 48, 16}}) {
    const kv::TensorLayout L = kv::tensor_layout(c.e, 1, 256, 48, c.group, 0);
    CAPTURE(kv::encoding_name(c.e));
    CAPTURE(c.group);
    // kivi2 values also hold their f16 window: 32 rows of a tag and 48 halves.
    const uint64_t window = c.e == Encoding::Q2 ? 32 * (4 + 96) : 0;
    CHECK(L.bytes() == c.bytes * 256 + window);
  }
  // kivi2 keys at 256 slots, blocks of 32: 12 bytes of codes per slot, 8
  // blocks x 48 channels x 4 bytes of scale+min, a 32-row f16 window.
  const kv::TensorLayout K = kv::tensor_layout(Encoding::Q2Channel, 1, 256, 48, 0, 0);
  CHECK(K.token_group == 32);
  CHECK(K.bytes() == 256 * 12 + 8 * 48 * 4 + 32 * 96);
  CHECK(K.bytes() == 30 * 256);
  // kivi2 (keys + values, default group 16) against f16: its two f16
  // windows of 32 rows are a quarter of a 256-token cache, less later on.
  const kv::TensorLayout V = kv::tensor_layout(Encoding::Q2, 1, 256, 48, 0, 0);
  const kv::TensorLayout F = kv::tensor_layout(Encoding::F16, 1, 256, 48, 0, 0);
  CHECK(V.recent_rows == 32);
  CHECK(double(K.bytes() + V.bytes()) / double(2 * F.bytes()) == doctest::Approx(0.3464).epsilon(0.001));
  const kv::TensorLayout K4 = kv::tensor_layout(Encoding::Q2Channel, 1, 1024, 48, 0, 0);
  const kv::TensorLayout V4 = kv::tensor_layout(Encoding::Q2, 1, 1024, 48, 0, 0);
  const kv::TensorLayout F4 = kv::tensor_layout(Encoding::F16, 1, 1024, 48, 0, 0);
  CHECK(double(K4.bytes() + V4.bytes()) / double(2 * F4.bytes()) == doctest::Approx(0.2507).epsilon(0.001));
  CHECK_THROWS_WITH_AS(kv::tensor_layout(Encoding::Q2, 1, 1024, 48, 0, 257), doctest::Contains("more than 256"),
                       std::invalid_argument);
  // A capacity that is not a multiple of the block, and one below it.
  const kv::TensorLayout odd = kv::tensor_layout(Encoding::Q2Channel, 3, 50, 48, 0, 12);
  CHECK(odd.n_blocks == 5);
  CHECK(odd.block_rows(4) == 2);
  CHECK(odd.recent_rows == 12);
  CHECK(odd.total_words == 3 * (50 * 3 + 5 * 48 + 12 * 24));
  const kv::TensorLayout small = kv::tensor_layout(Encoding::Q2Channel, 1, 5, 48, 0, 32);
  CHECK(small.n_blocks == 1);
  CHECK(small.recent_rows == 5);
  CHECK(small.block_rows(0) == 5);
}

TEST_CASE("kv formats: kivi2 key blocks are quantized per channel within half a step") {
  std::mt19937 rng(11);
  for (uint32_t head_dim : {48u, 64u, 128u}) {
    for (uint32_t rows : {1u, 7u, 12u, 32u}) {
      std::vector<float> x;
      std::vector<uint32_t> recent;
      for (uint32_t r = 0; r < rows; ++r) {
        auto row = random_row(rng, head_dim, 1.0f, true);
        for (uint32_t d = 0; d < head_dim; d += 2) {
          const uint16_t lo = kv::f16_from_f32(row[d]), hi = kv::f16_from_f32(row[d + 1]);
          recent.push_back(lo | uint32_t(hi) << 16);
          x.push_back(kv::f32_from_f16(lo));
          x.push_back(kv::f32_from_f16(hi));
        }
      }
      const uint32_t code_words = (head_dim + 15) / 16;
      std::vector<uint32_t> codes(rows * code_words), params(head_dim);
      kv::encode_channel_block(head_dim, rows, recent, codes, params);
      std::vector<float> y(head_dim);
      for (uint32_t r = 0; r < rows; ++r) {
        kv::decode_channel_row(head_dim, std::span(codes).subspan(r * code_words, code_words), params, y);
        for (uint32_t d = 0; d < head_dim; ++d) {
          const float scale = kv::f32_from_f16(uint16_t(params[d]));
          CHECK(std::fabs(y[d] - x[r * head_dim + d]) <= group_bound(scale, std::fabs(x[r * head_dim + d])));
        }
      }
      // The scale of each channel fits that channel's range (not the row's).
      for (uint32_t d = 0; d < head_dim; ++d) {
        float lo = x[d], hi = x[d];
        for (uint32_t r = 0; r < rows; ++r) {
          lo = std::min(lo, x[r * head_dim + d]);
          hi = std::max(hi, x[r * head_dim + d]);
        }
        CHECK(kv::f32_from_f16(uint16_t(params[d])) <=
              (hi - lo) / 3 * (1 + 2.0f / 1024) + std::fabs(lo) / 1024 + 6.2e-5f);
      }
    }
  }
}

TEST_CASE("kv slot table: blocks fill in order, seal when full, and reuse only whole blocks") {
  kv::SlotTable t(10, 4);  // blocks {0..3} {4..7} {8,9}
  CHECK(t.assignable() == 10);
  for (int p = 0; p < 3; ++p) CHECK(t.assign(p) == p);
  CHECK(t.open_block() == 0);
  CHECK(t.assign(3) == 3);
  CHECK(t.open_block() == -1);  // block 0 sealed
  CHECK(t.assign(4) == 4);
  CHECK(t.open_block() == 1);
  // A hole in sealed block 0 is not reused while the block holds tokens.
  t.release(1);
  CHECK(t.assignable() == 3 + 2);
  CHECK(t.assign(5) == 5);
  // A hole in the open block is.
  t.release(4);
  CHECK(t.open_block() == 1);
  CHECK(t.assign(6) == 4);
  CHECK(t.assign(7) == 6);
  CHECK(t.assign(8) == 7);  // block 1 sealed
  CHECK(t.open_block() == -1);
  CHECK(t.assign(9) == 8);
  CHECK(t.assign(10) == 9);  // the short last block sealed
  CHECK(t.assignable() == 0);
  CHECK(t.assign(11) == -1);
  CHECK(t.live() == 9);  // slot 1 is a hole
  // Emptying block 0 makes it usable again, from its first slot.
  for (uint32_t s : {0u, 2u, 3u}) t.release(s);
  CHECK(t.assignable() == 4);
  CHECK(t.assign(12) == 0);
  CHECK(t.open_block() == 0);
  // An open block that empties is closed; the lowest empty block opens next.
  t.release(0);
  CHECK(t.open_block() == -1);
  for (uint32_t s = 4; s < 10; ++s) t.release(s);
  CHECK(t.assign(13) == 0);
  CHECK(t.high_water() == 1);
}

TEST_CASE("kv tensor image: kivi2 keys through the slot table — window, sealing, reuse after truncation") {
  // capacity 50 in blocks of 12 (not a divisor of 32 or of 50), 2 heads,
  // written in batches of uneven size, as KvCache::reserve assigns them.
  const uint32_t capacity = 50, T = 12, D = 48, heads = 2;
  const kv::TensorLayout L = kv::tensor_layout(Encoding::Q2Channel, heads, capacity, D, 0, T);
  kv::TensorImage image(L);
  std::vector<kv::SlotTable> tables(heads, kv::SlotTable(capacity, T));
  std::vector<std::vector<float>> by_position;  // what each position's key was, f16-rounded
  std::mt19937 rng(5);
  auto check_all = [&] {
    for (uint32_t h = 0; h < heads; ++h) {
      const kv::SlotTable& t = tables[h];
      std::vector<float> y(D);
      for (uint32_t s = 0; s < capacity; ++s) {
        const int32_t pos = t.position(s);
        if (pos < 0) continue;
        image.read(h, s, t.open_block(), y);
        const auto& x = by_position[pos];
        const bool in_window = int32_t(s / T) == t.open_block();
        for (uint32_t d = 0; d < D; ++d) {
          // the window holds the f16 key exactly; a sealed block within
          // half a step of its channel's scale (loose here: range / 3 / 2)
          if (in_window) CHECK(y[d] == kv::f32_from_f16(kv::f16_from_f32(x[d] + h)));
          else CHECK(std::fabs(y[d] - (x[d] + h)) <= 0.5f * 25.0f / 3.0f);
        }
      }
    }
  };
  auto write = [&](uint32_t n) {
    std::vector<int32_t> positions;
    for (uint32_t i = 0; i < n; ++i) {
      positions.push_back(int32_t(by_position.size()));
      by_position.push_back(random_row(rng, D, 1.0f, false));
    }
    for (uint32_t h = 0; h < heads; ++h) {
      std::vector<int32_t> slots;
      std::vector<float> x;
      for (int32_t p : positions) {
        slots.push_back(tables[h].assign(p));
        for (float v : by_position[p]) x.push_back(v + float(h));  // heads differ
      }
      image.write(h, slots, x, tables[h].open_block());
      image.write_window(h, slots, positions, x, tables[h].open_block());
    }
    check_all();
  };
  for (uint32_t n : {5u, 1u, 9u, 12u, 2u, 14u}) write(n);  // 43 tokens: blocks 0-2 sealed, 3 open
  CHECK(tables[0].open_block() == 3);
  // Truncate to position 20: block 1 (slots 12..23) keeps holes 20..23,
  // blocks 2 and 3 empty; new tokens go to block 2 and are right.
  for (auto& t : tables)
    for (uint32_t s = 0; s < capacity; ++s)
      if (t.position(s) >= 20) t.release(s);
  by_position.resize(20);
  CHECK(tables[0].assignable() == 50 - 24);
  write(3);
  CHECK(tables[0].position(24) == 20);
  write(20);
  check_all();
}

// KIVI's full-precision residual, the property eval relies on: a prefill
// reads exactly what the same tokens read one step at a time (and in any
// split into steps), so a cache measured by prefilling chunks is the cache a
// conversation gets. Through blocks of 8 keys, a value window of 8, a
// capacity that ends in a short block, and a truncation.
TEST_CASE("kv tensor image: kivi2 reads the same in a prefill as token by token") {
  const uint32_t capacity = 53, T = 8, D = 48, n_total = 44;
  const kv::TensorLayout K = kv::tensor_layout(Encoding::Q2Channel, 1, capacity, D, 0, T);
  const kv::TensorLayout V = kv::tensor_layout(Encoding::Q2, 1, capacity, D, 16, T);
  std::mt19937 rng(9);
  std::vector<std::vector<float>> keys, values;
  for (uint32_t i = 0; i < n_total; ++i) {
    keys.push_back(random_row(rng, D, 1.0f, false));
    values.push_back(random_row(rng, D, 1.0f, false));
  }
  // What every query reads of every visible position: [query][position][d], by step sizes.
  using Reads = std::vector<std::vector<std::vector<float>>>;
  auto run = [&](const std::vector<uint32_t>& steps, uint32_t truncate_after, int32_t truncate_to) {
    kv::TensorImage k_image(K), v_image(V);
    kv::SlotTable table(capacity, T);
    Reads reads(n_total, std::vector<std::vector<float>>(n_total));
    int32_t next = 0;
    uint32_t done = 0;
    for (uint32_t n : steps) {
      std::vector<int32_t> positions, slots;
      std::vector<float> k_rows, v_rows;
      for (uint32_t i = 0; i < n; ++i, ++next) {
        positions.push_back(next);
        slots.push_back(table.assign(next));
        k_rows.insert(k_rows.end(), keys[next].begin(), keys[next].end());
        v_rows.insert(v_rows.end(), values[next].begin(), values[next].end());
      }
      k_image.write(0, slots, k_rows, table.open_block());
      v_image.write(0, slots, v_rows, table.open_block());
      for (uint32_t i = 0; i < n; ++i) {
        const kv::TensorImage::Query kq{positions[i], table.open_block(), slots[i] / int32_t(T), positions[0], k_rows};
        const kv::TensorImage::Query vq{positions[i], table.open_block(), -1, positions[0], v_rows};
        for (uint32_t s = 0; s < capacity; ++s) {
          const int32_t sp = table.position(s);
          if (sp < 0 || sp > positions[i]) continue;
          std::vector<float> k(D), v(D);
          k_image.read_for_query(0, s, sp, kq, k);
          v_image.read_for_query(0, s, sp, vq, v);
          k.insert(k.end(), v.begin(), v.end());
          reads[positions[i]][sp] = k;
        }
      }
      k_image.write_window(0, slots, positions, k_rows, table.open_block());
      v_image.write_window(0, slots, positions, v_rows, table.open_block());
      if (++done == truncate_after) {
        for (uint32_t s = 0; s < capacity; ++s)
          if (table.position(s) >= truncate_to) table.release(s);
        next = truncate_to;
      }
    }
    return reads;
  };
  auto reread = [](const std::vector<uint32_t>& steps, uint32_t from) {  // steps, then one at a time from `from`
    std::vector<uint32_t> out = steps;
    for (uint32_t i = from; i < n_total; ++i) out.push_back(1);
    return out;
  };
  const Reads one_by_one = run(reread({}, 0), 0, 0);
  CHECK(run({n_total}, 0, 0) == one_by_one);
  CHECK(run({13, 1, 30}, 0, 0) == one_by_one);
  CHECK(run({3, 5, 9, 27}, 0, 0) == one_by_one);
  // The windows hold f16 and the rest is quantized: reads differ from the keys.
  CHECK(one_by_one[40][0] != one_by_one[40][40]);
  // After a truncation to 20 (inside the open block and the value window),
  // a prefill again reads what single steps read.
  const Reads truncated = run(reread({30}, 20), 1, 20);
  CHECK(run({30, 24}, 1, 20) == truncated);
  CHECK(run({30, 5, 19}, 1, 20) == truncated);
}
