// ggml types: traits, IEEE half conversion edge cases, Q8_0 / Q4_0 against
// ggml's formulas (known vectors worked out by hand, error bounds on random
// data), and `quantize_model` on the synthetic llama model.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include <unistd.h>

#include "models/ggml_kquants.h"
#include "models/ggml_types.h"
#include "models/gguf.h"
#include "models/hparams.h"
#include "models/quantize.h"
#include "tests/models/synthetic_llama.h"

using namespace kvscope;
using kvscope::testing::SyntheticLlama;
using kvscope::testing::synthetic_llama_writer;
using kvscope::testing::synthetic_values;

namespace {

float f16_bits_to_float(uint16_t h) { return f16_to_f32(h); }

std::vector<uint8_t> quantize(GgmlType t, const std::vector<float>& x) {
  std::vector<uint8_t> out(row_bytes(t, x.size()));
  quantize_row(t, x, out);
  return out;
}

std::vector<float> dequantize(GgmlType t, const std::vector<uint8_t>& bytes, size_t n) {
  std::vector<float> out(n);
  dequantize_row(t, bytes, out);
  return out;
}

uint16_t block_scale_bits(const std::vector<uint8_t>& bytes, size_t block_bytes, size_t block) {
  uint16_t h;
  std::memcpy(&h, bytes.data() + block * block_bytes, 2);
  return h;
}

std::filesystem::path temp_dir() {
  auto dir = std::filesystem::temp_directory_path() / ("kvscope-test-quant-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("ggml types: block sizes as ggml defines them") {
  struct Row {
    uint32_t id;
    const char* name;
    uint32_t elems, bytes;
  };
  const Row rows[] = {{0, "F32", 1, 4},      {1, "F16", 1, 2},      {2, "Q4_0", 32, 18},   {3, "Q4_1", 32, 20},
                      {6, "Q5_0", 32, 22},   {7, "Q5_1", 32, 24},   {8, "Q8_0", 32, 34},   {9, "Q8_1", 32, 36},
                      {10, "Q2_K", 256, 84}, {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
                      {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {20, "IQ4_NL", 32, 18}, {23, "IQ4_XS", 256, 136},
                      {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74}, {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
                      {21, "IQ3_S", 256, 110}, {22, "IQ2_S", 256, 82}, {29, "IQ1_M", 256, 56},
                      {24, "I8", 1, 1},     {25, "I16", 1, 2},
                      {26, "I32", 1, 4},     {27, "I64", 1, 8},     {28, "F64", 1, 8},     {30, "BF16", 1, 2}};
  for (const Row& r : rows) {
    CAPTURE(r.name);
    const auto t = type_traits(r.id);
    REQUIRE(t.has_value());
    CHECK(t->name == r.name);
    CHECK(t->block_elems == r.elems);
    CHECK(t->block_bytes == r.bytes);
    CHECK(type_from_name(r.name) == static_cast<GgmlType>(r.id));
  }
  for (uint32_t unknown : {4u, 5u, 31u, 32u, 1000u}) CHECK_FALSE(type_traits(unknown).has_value());
  CHECK_FALSE(type_supported(GgmlType::IQ2_XXS));  // known by size (named in errors), not read
  CHECK(type_from_name("q8_0") == GgmlType::Q8_0);
  CHECK(type_from_name("bf16") == GgmlType::BF16);
  CHECK_FALSE(type_from_name("q8").has_value());
  CHECK(type_supported(GgmlType::F32));
  CHECK(type_supported(GgmlType::F16));
  CHECK(type_supported(GgmlType::Q8_0));
  CHECK(type_supported(GgmlType::Q4_0));
  for (GgmlType t : {GgmlType::BF16, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::IQ4_NL, GgmlType::Q2_K,
                     GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS})
    CHECK(type_supported(t));
  for (GgmlType t : {GgmlType::IQ4_NL, GgmlType::IQ4_XS}) CHECK_FALSE(type_writable(t));
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_0}) CHECK(type_writable(t));
  CHECK_FALSE(type_supported(GgmlType::Q8_1));
  CHECK_FALSE(type_supported(GgmlType::Q8_K));
  CHECK(supported_types_list() == "F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS");
  CHECK(row_bytes(GgmlType::Q8_0, 64) == 68);
  CHECK(row_bytes(GgmlType::Q4_0, 32) == 18);
  CHECK(row_bytes(GgmlType::F16, 7) == 14);
  CHECK(row_bytes(GgmlType::Q6_K, 512) == 420);
  CHECK_THROWS_AS(row_bytes(GgmlType::Q8_0, 33), std::invalid_argument);
}

TEST_CASE("f16: conversion edge cases") {
  CHECK(f32_to_f16(0.0f) == 0x0000);
  CHECK(f32_to_f16(-0.0f) == 0x8000);
  CHECK(f32_to_f16(1.0f) == 0x3C00);
  CHECK(f32_to_f16(-2.0f) == 0xC000);
  CHECK(f32_to_f16(65504.0f) == 0x7BFF);        // largest half
  CHECK(f32_to_f16(65519.99f) == 0x7BFF);       // below the halfway point to 65536
  CHECK(f32_to_f16(65520.0f) == 0x7C00);        // halfway: rounds to even, which is infinity
  CHECK(f32_to_f16(1e10f) == 0x7C00);
  CHECK(f32_to_f16(std::numeric_limits<float>::infinity()) == 0x7C00);
  CHECK(f32_to_f16(-std::numeric_limits<float>::infinity()) == 0xFC00);
  const uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7C00) == 0x7C00);
  CHECK((nan & 0x03FF) != 0);
  CHECK(std::isnan(f16_to_f32(nan)));
  CHECK(std::isnan(f16_to_f32(f32_to_f16(std::bit_cast<float>(0x7F800001u)))));  // signalling NaN stays NaN
  CHECK(f32_to_f16(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
  CHECK(f32_to_f16(std::ldexp(1023.0f, -24)) == 0x03FF);  // largest subnormal
  CHECK(f32_to_f16(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);  // tie between 0 and 2^-24: even is 0
  CHECK(f32_to_f16(std::ldexp(1.0f, -25) * 1.0000001f) == 0x0001);
  CHECK(f32_to_f16(std::ldexp(3.0f, -25)) == 0x0002);  // tie between 1 and 2 units: even is 2
  CHECK(f32_to_f16(std::ldexp(5.0f, -25)) == 0x0002);  // tie between 2 and 3 units: even is 2
  CHECK(f32_to_f16(-std::ldexp(1.0f, -24)) == 0x8001);
  CHECK(f32_to_f16(std::ldexp(1.0f, -30)) == 0x0000);
  CHECK(f32_to_f16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(f32_to_f16(std::ldexp(2047.0f, -25)) == 0x0400);  // 1023.5 units: ties to 1024, the smallest normal
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);  // tie: mantissa 0 is even
  CHECK(f32_to_f16(1.0f + std::ldexp(3.0f, -11)) == 0x3C02);  // tie: mantissa 2 is even
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)) == 0x3C01);  // just above the tie
  CHECK(f32_to_f16(0.1f) == 0x2E66);
  CHECK(f32_to_f16(1.0f / 3.0f) == 0x3555);

  CHECK(f16_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_bits_to_float(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(f16_bits_to_float(0x7BFF) == 65504.0f);
  CHECK(std::signbit(f16_bits_to_float(0x8000)));
  CHECK(f16_bits_to_float(0x8000) == 0.0f);
  CHECK(f16_bits_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(f16_bits_to_float(0x3555) == doctest::Approx(1.0 / 3.0).epsilon(1e-3));

  // Every half converts to float and back to itself (NaNs stay NaN).
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      REQUIRE(std::isnan(f16_to_f32(f32_to_f16(f))));
    } else {
      REQUIRE(f32_to_f16(f) == h);
    }
  }
}

TEST_CASE("q8_0: the block 0..31, worked out from ggml's formulas") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j);
  const auto bytes = quantize(GgmlType::Q8_0, x);
  REQUIRE(bytes.size() == 34);
  // d = amax / 127 = 31/127 = 0.244094...; as half: 2^-3 * (1 + 976/1024) = 0x33D0.
  CHECK(block_scale_bits(bytes, 34, 0) == 0x33D0);
  // q = round(j * 127 / 31): no product lands near a .5, so float and exact agree.
  const int8_t expected[32] = {0,  4,  8,  12, 16, 20, 25, 29, 33, 37, 41,  45,  49,  53,  57,  61,
                               66, 70, 74, 78, 82, 86, 90, 94, 98, 102, 107, 111, 115, 119, 123, 127};
  for (int j = 0; j < 32; ++j) {
    CAPTURE(j);
    CHECK(static_cast<int8_t>(bytes[2 + j]) == expected[j]);
  }
  const auto back = dequantize(GgmlType::Q8_0, bytes, 32);
  const float d = f16_to_f32(0x33D0);
  for (int j = 0; j < 32; ++j) CHECK(back[j] == static_cast<float>(expected[j]) * d);

  SUBCASE("negative values and an all-zero block") {
    std::vector<float> y(64, 0.0f);
    y[3] = -2.54f;  // amax 2.54: d = 0.02, q[3] = -127
    y[4] = 1.0f;    // 1 / 0.02 = 50
    const auto b = quantize(GgmlType::Q8_0, y);
    CHECK(static_cast<int8_t>(b[2 + 3]) == -127);
    CHECK(static_cast<int8_t>(b[2 + 4]) == 50);
    CHECK(block_scale_bits(b, 34, 1) == 0x0000);  // zero block: d = 0, id = 0, all q = 0
    for (int j = 0; j < 32; ++j) CHECK(b[34 + 2 + j] == 0);
  }
}

TEST_CASE("q4_0: the block 0..31, worked out from ggml's formulas") {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j);
  const auto bytes = quantize(GgmlType::Q4_0, x);
  REQUIRE(bytes.size() == 18);
  // max = 31 (largest magnitude, sign kept), d = 31 / -8 = -3.875 = -(2 * 1.9375): half 0xC3C0.
  CHECK(block_scale_bits(bytes, 18, 0) == 0xC3C0);
  // q = min(15, trunc(j * (-8/31) + 8.5)) = floor(8.5 - 8j/31): never within 1/62 of an integer.
  uint8_t q[32];
  for (int j = 0; j < 32; ++j) q[j] = static_cast<uint8_t>(std::min(15.0, std::floor(8.5 - 8.0 * j / 31.0)));
  const uint8_t by_hand[32] = {8, 8, 7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4,
                               4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0};
  for (int j = 0; j < 32; ++j) REQUIRE(q[j] == by_hand[j]);
  for (int j = 0; j < 16; ++j) {
    CAPTURE(j);
    CHECK(bytes[2 + j] == (by_hand[j] | (by_hand[j + 16] << 4)));
  }
  const auto back = dequantize(GgmlType::Q4_0, bytes, 32);
  for (int j = 0; j < 32; ++j) CHECK(back[j] == static_cast<float>(by_hand[j] - 8) * -3.875f);
  CHECK(back[31] == 31.0f);  // the largest magnitude is exact: it maps to -8

  SUBCASE("negative extreme and the clamp at 15") {
    std::vector<float> y(32, 0.0f);
    y[0] = -10.0f;  // d = 1.25, q = 0
    y[1] = 10.0f;   // 10 / 1.25 + 8.5 = 16.5: clamped to 15, so it decodes to 8.75
    y[2] = 0.6f;    // 0.48 + 8.5 = 8.98 -> 8 (truncation after +8.5 is rounding)
    y[3] = 0.7f;    // 0.56 + 8.5 = 9.06 -> 9
    const auto b = quantize(GgmlType::Q4_0, y);
    CHECK(block_scale_bits(b, 18, 0) == f32_to_f16(1.25f));
    CHECK((b[2] & 0x0F) == 0);
    CHECK((b[3] & 0x0F) == 15);
    CHECK((b[4] & 0x0F) == 8);
    CHECK((b[5] & 0x0F) == 9);
    CHECK((b[2 + 5] >> 4) == 8);  // element 21 is zero: q = 8
    const auto back_y = dequantize(GgmlType::Q4_0, b, 32);
    CHECK(back_y[0] == -10.0f);
    CHECK(back_y[1] == 8.75f);
  }
}

TEST_CASE("q8_0 / q4_0: error bounds on random data, one bound per block") {
  for (float scale : {1e-3f, 0.5f, 30.0f}) {
    CAPTURE(scale);
    const size_t n = 32 * 40;
    std::vector<float> x = synthetic_values(n, 7, scale);
    x[5] = 0.0f;
    for (size_t j = 64; j < 96; ++j) x[j] = 0.0f;  // a whole zero block
    const auto q8 = quantize(GgmlType::Q8_0, x);
    const auto q4 = quantize(GgmlType::Q4_0, x);
    const auto back8 = dequantize(GgmlType::Q8_0, q8, n);
    const auto back4 = dequantize(GgmlType::Q4_0, q4, n);
    for (size_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f;
      for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
      // Rounding costs d/2 (Q4_0: up to d at the clamped end); the scale is
      // stored as a half, whose error is multiplied by |q| <= 127 (Q4_0: 8).
      const float d8 = amax / 127.0f, d4 = amax / 8.0f;
      const float half_error8 = std::fabs(d8 - f16_to_f32(f32_to_f16(d8)));
      const float half_error4 = std::fabs(d4 - f16_to_f32(f32_to_f16(d4)));
      const float bound8 = d8 / 2 + 127 * half_error8 + 1e-6f * amax;
      const float bound4 = d4 + 8 * half_error4 + 1e-6f * amax;
      for (size_t j = 0; j < 32; ++j) {
        const size_t i = b * 32 + j;
        REQUIRE_MESSAGE(std::fabs(x[i] - back8[i]) <= bound8, "q8_0 element " << i);
        REQUIRE_MESSAGE(std::fabs(x[i] - back4[i]) <= bound4, "q4_0 element " << i);
      }
    }
    for (size_t j = 64; j < 96; ++j) CHECK(back8[j] == 0.0f);
    for (size_t j = 64; j < 96; ++j) CHECK(back4[j] == 0.0f);
  }
}

TEST_CASE("quantize_row: sizes are checked; inf and NaN do not crash") {
  std::vector<float> x(32, 1.0f);
  std::vector<uint8_t> small(33);
  CHECK_THROWS_AS(quantize_row(GgmlType::Q8_0, x, small), std::invalid_argument);
  std::vector<float> odd(31, 1.0f);
  std::vector<uint8_t> out(34);
  CHECK_THROWS_AS(quantize_row(GgmlType::Q8_0, odd, out), std::invalid_argument);
  std::vector<uint8_t> q41(19);
  CHECK_THROWS_AS(quantize_row(GgmlType::Q4_1, x, q41), std::invalid_argument);
  std::vector<uint8_t> iq4xs(136);
  std::vector<float> x256(256, 1.0f);
  CHECK_THROWS_WITH_AS(quantize_row(GgmlType::IQ4_XS, x256, iq4xs), doctest::Contains("kvscope cannot write type IQ4_XS"),
                       std::invalid_argument);
  std::vector<float> back(32);
  CHECK_THROWS_AS(dequantize_row(GgmlType::Q4_0, out, back), std::invalid_argument);

  x[3] = std::numeric_limits<float>::infinity();
  x[4] = std::numeric_limits<float>::quiet_NaN();
  // Results for such blocks are meaningless (as in ggml); they must only be defined.
  CHECK_NOTHROW(quantize(GgmlType::Q8_0, x));
  CHECK_NOTHROW(quantize(GgmlType::Q4_0, x));
  CHECK_NOTHROW(quantize(GgmlType::F16, x));

  const std::vector<float> f32 = {1.5f, -0.0f, 3.0e38f};
  CHECK(dequantize(GgmlType::F32, quantize(GgmlType::F32, f32), 3) == f32);
  const auto f16 = dequantize(GgmlType::F16, quantize(GgmlType::F16, f32), 3);
  CHECK(f16[0] == 1.5f);
  CHECK(std::signbit(f16[1]));
  CHECK(std::isinf(f16[2]));
}

TEST_CASE("quantize_model: the synthetic llama model to F16, Q8_0 and Q4_0") {
  const auto dir = temp_dir();
  const std::string src_path = (dir / "f32.gguf").string();
  synthetic_llama_writer().write(src_path);
  const GgufFile src = GgufFile::open(src_path);

  for (GgmlType target : {GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0}) {
    const std::string name(type_traits(static_cast<uint32_t>(target))->name);
    CAPTURE(name);
    const std::string out_path = (dir / (name + ".gguf")).string();
    const QuantizeResult result = quantize_model(src_path, out_path, target);
    CHECK(result.n_quantized == 1 + 1 + 2 * 7);  // token_embd, output, 7 matrices per layer
    CHECK(result.n_kept == 1 + 2 * 2);           // output_norm, 2 norms per layer
    CHECK(result.bytes_in == src.file_size());
    CHECK(result.bytes_out == std::filesystem::file_size(out_path));
    CHECK(result.bytes_out < result.bytes_in);

    const GgufFile out = GgufFile::open(out_path);
    const LlamaConfig cfg = read_llama_config(out);
    CHECK(cfg.dim == 64);
    const uint32_t expected_file_type = target == GgmlType::F16 ? 1 : target == GgmlType::Q8_0 ? 7 : 2;
    CHECK(out.get_uint("general.file_type") == expected_file_type);
    for (const std::string& key : src.metadata_order()) CHECK(out.has(key));
    CHECK(out.get_string("general.name") == "synthetic");
    CHECK(out.get("tokenizer.ggml.tokens").as_array("t").items.size() == 100);

    REQUIRE(out.tensors().size() == src.tensors().size());
    for (const GgufTensorInfo& s : src.tensors()) {
      CAPTURE(s.name);
      const GgufTensorInfo& t = out.tensor(s.name);
      CHECK(t.shape == s.shape);
      if (s.shape.size() == 1) {
        CHECK(t.type == GgmlType::F32);
        CHECK(std::memcmp(t.data, s.data, s.n_bytes) == 0);
        continue;
      }
      CHECK(t.type == target);
      // Bit-exact against quantize_row of the source rows, and close in value.
      const size_t row = s.shape[0], n_rows = s.n_elements / row;
      const size_t out_row = row_bytes(target, row);
      std::vector<float> src_row(row), back(row);
      std::vector<uint8_t> expected(out_row);
      double max_err = 0.0;
      for (size_t r = 0; r < n_rows; ++r) {
        std::memcpy(src_row.data(), s.data + r * row * 4, row * 4);
        quantize_row(target, src_row, expected);
        REQUIRE(std::memcmp(t.data + r * out_row, expected.data(), out_row) == 0);
        dequantize_row(target, {t.data + r * out_row, out_row}, back);
        for (size_t j = 0; j < row; ++j) max_err = std::max(max_err, double(std::fabs(back[j] - src_row[j])));
      }
      // Synthetic weights are within ±0.5: d <= 0.5/127 for Q8_0, 0.5/8 for Q4_0.
      const double bound = target == GgmlType::F16 ? 0.5 * std::ldexp(1.0, -11)
                           : target == GgmlType::Q8_0 ? 0.5 / 127 * 0.57
                                                      : 0.5 / 8 * 1.01;
      CHECK(max_err <= bound);
    }
  }

  SUBCASE("an F16 model quantizes to Q8_0, identical to quantizing its values") {
    SyntheticLlama s;
    s.matrix_type = GgmlType::F16;
    const std::string f16_path = (dir / "f16-src.gguf").string();
    synthetic_llama_writer(s).write(f16_path);
    const std::string q8_path = (dir / "f16-to-q8.gguf").string();
    quantize_model(f16_path, q8_path, GgmlType::Q8_0);
    const GgufFile f16 = GgufFile::open(f16_path);
    const GgufFile q8 = GgufFile::open(q8_path);
    const GgufTensorInfo& a = f16.tensor("blk.0.ffn_down.weight");
    const GgufTensorInfo& b = q8.tensor("blk.0.ffn_down.weight");
    CHECK(b.type == GgmlType::Q8_0);
    std::vector<float> values(a.n_elements);
    dequantize_row(GgmlType::F16, {a.data, a.n_bytes}, values);
    std::vector<uint8_t> expected(b.n_bytes);
    quantize_row(GgmlType::Q8_0, values, expected);
    CHECK(std::memcmp(b.data, expected.data(), b.n_bytes) == 0);
  }
  SUBCASE("unsupported targets, rows that do not fill blocks, and unsupported sources are named") {
    CHECK_THROWS_WITH_AS(quantize_model(src_path, (dir / "x.gguf").string(), GgmlType::IQ4_NL),
                         doctest::Contains("cannot quantize to IQ4_NL; choose one of F16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q3_K Q4_K "
                                           "Q5_K Q6_K Q2_K Q3_K_M Q4_K_M Q5_K_M"),
                         std::runtime_error);
    GgufWriter w = synthetic_llama_writer();
    w.add_tensor("extra.weight", GgmlType::F32, {33, 2}, kvscope::testing::synthetic_tensor_bytes(GgmlType::F32, {33, 2}, 9));
    const std::string odd_path = (dir / "odd.gguf").string();
    w.write(odd_path);
    CHECK_THROWS_WITH_AS(quantize_model(odd_path, (dir / "y.gguf").string(), GgmlType::Q4_0),
                         doctest::Contains("tensor 'extra.weight' has rows of 33 elements"), std::runtime_error);
    CHECK_NOTHROW(quantize_model(odd_path, (dir / "z.gguf").string(), GgmlType::F16));

    GgufWriter k = synthetic_llama_writer();
    k.add_tensor("kquant.weight", GgmlType::Q8_K, {256, 1}, std::vector<uint8_t>(292));
    const std::string k_path = (dir / "k.gguf").string();
    k.write(k_path);
    CHECK_THROWS_WITH_AS(quantize_model(k_path, (dir / "w.gguf").string(), GgmlType::Q8_0),
                         doctest::Contains("tensor kquant.weight has type Q8_K, which kvscope cannot convert; "
                                           "supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS"),
                         std::runtime_error);
  }
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------- BF16 and the K-quants

namespace {

std::vector<float> gaussian_values(size_t n, uint32_t seed, float sigma) {
  std::vector<float> v(n);
  uint32_t state = seed * 747796405u + 2891336453u;
  auto uniform = [&] {  // (0, 1]
    state = state * 1664525u + 1013904223u;
    return (static_cast<double>(state >> 8) + 1.0) / static_cast<double>(1u << 24);
  };
  for (size_t i = 0; i < n; i += 2) {  // Box-Muller
    const double r = std::sqrt(-2.0 * std::log(uniform())), angle = 2.0 * M_PI * uniform();
    v[i] = static_cast<float>(sigma * r * std::cos(angle));
    if (i + 1 < n) v[i + 1] = static_cast<float>(sigma * r * std::sin(angle));
  }
  return v;
}

double relative_rmse(const std::vector<float>& x, const std::vector<float>& y) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    norm += double(x[i]) * x[i];
  }
  return std::sqrt(err / norm);
}

void put_f16(std::vector<uint8_t>& bytes, size_t at, uint16_t h) { std::memcpy(bytes.data() + at, &h, 2); }

// Packs eight 6-bit scales and mins the way ggml's get_scale_min_k4 reads them.
void pack_scales_mins(uint8_t* out, const uint8_t sc[8], const uint8_t m[8]) {
  for (int j = 0; j < 4; ++j) {
    out[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    out[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
}

}  // namespace

TEST_CASE("bf16: ggml's rounding, NaN kept, every value round-trips") {
  CHECK(f32_to_bf16(1.0f) == 0x3F80);
  CHECK(f32_to_bf16(-2.0f) == 0xC000);
  CHECK(f32_to_bf16(std::bit_cast<float>(0x3F808000u)) == 0x3F80);  // tie: even mantissa stays
  CHECK(f32_to_bf16(std::bit_cast<float>(0x3F818000u)) == 0x3F82);  // tie: odd rounds up
  CHECK(f32_to_bf16(std::bit_cast<float>(0x3F808001u)) == 0x3F81);  // just above the tie
  CHECK(f32_to_bf16(std::numeric_limits<float>::infinity()) == 0x7F80);
  CHECK(f32_to_bf16(std::bit_cast<float>(0x7F7FFFFFu)) == 0x7F80);  // the largest float rounds to inf
  const uint16_t nan = f32_to_bf16(std::bit_cast<float>(0x7F800001u));  // signalling NaN: payload lost in the top half
  CHECK(std::isnan(bf16_to_f32(nan)));
  CHECK((nan & 0x40) != 0);  // quiet
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    REQUIRE(std::bit_cast<uint32_t>(f) == h << 16);
    if (!std::isnan(f)) REQUIRE(f32_to_bf16(f) == h);
  }
  const std::vector<float> x = {1.0f, -3.5f, 0.15625f, 65536.0f};
  const auto bytes = quantize(GgmlType::BF16, x);
  CHECK(bytes.size() == 8);
  CHECK(dequantize(GgmlType::BF16, bytes, 4) == x);  // all four are exact in bf16
}

TEST_CASE("q4_k / q5_k: hand-built blocks decode as ggml's formulas say") {
  SUBCASE("the 6-bit scale/min packing, from literal bytes") {
    uint8_t scales[12] = {0xC5, 0x01, 0x3F, 0x40, 0x47, 0x80, 0x00, 0xFF, 0x2A, 0x10, 0x0F, 0xF0};
    uint8_t sc, m;
    kq_scale_min(scales, 0, sc, m);
    CHECK(sc == 5);  // 0xC5 & 63
    CHECK(m == 7);   // 0x47 & 63
    kq_scale_min(scales, 3, sc, m);
    CHECK(sc == 0);   // 0x40 & 63
    CHECK(m == 63);   // 0xFF & 63
    kq_scale_min(scales, 4, sc, m);
    CHECK(sc == 0x3A);  // low nibble of 0x2A, top bits of 0xC5 (3) -> 0x30
    CHECK(m == 0x12);   // high nibble of 0x2A (2), top bits of 0x47 (1) -> 0x10
    kq_scale_min(scales, 7, sc, m);
    CHECK(sc == 0x10);  // low nibble of 0xF0 (0), top bits of 0x40 (1) -> 0x10
    CHECK(m == 0x3F);   // high nibble of 0xF0 (15), top bits of 0xFF (3) -> 0x30
  }
  for (const bool five : {false, true}) {
    CAPTURE(five);
    const GgmlType type = five ? GgmlType::Q5_K : GgmlType::Q4_K;
    const size_t block_bytes = five ? 176 : 144, qs_at = five ? 48 : 16;
    std::vector<uint8_t> block(block_bytes, 0);
    put_f16(block, 0, 0x3C00);  // d = 1
    put_f16(block, 2, 0x3800);  // dmin = 0.5
    const uint8_t sc[8] = {1, 2, 3, 63, 17, 33, 48, 5}, m[8] = {0, 1, 2, 3, 40, 63, 16, 7};
    pack_scales_mins(block.data() + 4, sc, m);
    // Element l of sub-block j gets code (3l + j) % levels.
    const int levels = five ? 32 : 16;
    for (int j = 0; j < 8; ++j) {
      for (int l = 0; l < 32; ++l) {
        const int q = (3 * l + j) % levels;
        block[qs_at + 32 * (j / 2) + l] |= static_cast<uint8_t>((q & 0xF) << (4 * (j % 2)));
        if (q > 15) block[16 + l] |= static_cast<uint8_t>(1u << j);
      }
    }
    const auto y = dequantize(type, block, 256);
    for (int j = 0; j < 8; ++j) {
      uint8_t got_sc, got_m;
      kq_scale_min(block.data() + 4, j, got_sc, got_m);
      CHECK(got_sc == sc[j]);
      CHECK(got_m == m[j]);
      for (int l = 0; l < 32; ++l) {
        const int q = (3 * l + j) % levels;
        // Small integers times powers of two: exact in f32.
        REQUIRE_MESSAGE(y[32 * j + l] == static_cast<float>(sc[j] * q) - 0.5f * m[j], "element " << 32 * j + l);
      }
    }
  }
}

TEST_CASE("q6_k: a hand-built block decodes as ggml's formula says") {
  std::vector<uint8_t> block(210, 0);
  const int8_t scales[16] = {1, -1, 2, -3, 127, -128, 0, 5, 7, -9, 11, 13, -17, 19, 23, -29};
  std::memcpy(block.data() + 192, scales, 16);
  put_f16(block, 208, 0x3400);  // d = 0.25
  auto code = [](int e) { return (7 * e + e / 64) % 64; };
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32, q = code(e);
    block[64 * h + 32 * (k & 1) + l] |= static_cast<uint8_t>((q & 0xF) << (4 * (k >> 1)));
    block[128 + 32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
  }
  const auto y = dequantize(GgmlType::Q6_K, block, 256);
  for (int e = 0; e < 256; ++e)
    REQUIRE_MESSAGE(y[e] == 0.25f * scales[e / 16] * static_cast<float>(code(e) - 32), "element " << e);
  CHECK(y[0] == 0.25f * 1 * -32);  // code 0 is the most negative level
}

TEST_CASE("k-quants: round-trip error on gaussian data, zero and one-signed blocks") {
  // Measured relative RMSE (|x - dequant(quant(x))| / |x|) of this quantizer on
  // N(0, sigma) data, sigma 1 and 30: Q4_K 0.0718, Q5_K 0.0362, Q6_K 0.0173;
  // at sigma 1e-3 the f16 super-block scale is subnormal and coarser: 0.0721,
  // 0.0373, 0.0205. Near what the formats allow: rounding alone on an even
  // grid over a Gaussian block's range costs about 0.08 (16 levels over 32
  // values), 0.04 and 0.016 (64 levels over 16 values). Bounds: ~10% above.
  // Q3_K (8 levels per 16, no min: 0.144 at every sigma) and Q2_K (4 levels
  // and a min per 16: 0.276) likewise. One-signed blocks cost those two more
  // (0.034, 0.042): Q3_K has no min, Q2_K's mins are subtracted (>= 0), so an
  // all-positive block keeps its levels from 0 up, as in ggml's format.
  struct Case {
    GgmlType type;
    double bound;
    double one_signed_bound;  // the all-positive and all-negative blocks below
  };
  for (const Case c : {Case{GgmlType::Q4_K, 0.080, 0.01}, Case{GgmlType::Q5_K, 0.041, 0.01},
                       Case{GgmlType::Q6_K, 0.0225, 0.01}, Case{GgmlType::Q3_K, 0.175, 0.05},
                       Case{GgmlType::Q2_K, 0.30, 0.05}}) {
    const std::string name(type_traits(static_cast<uint32_t>(c.type))->name);
    for (float sigma : {1e-3f, 1.0f, 30.0f}) {
      CAPTURE(name);
      CAPTURE(sigma);
      const size_t n = 256 * 64;
      const std::vector<float> x = gaussian_values(n, 17, sigma);
      const auto back = dequantize(c.type, quantize(c.type, x), n);
      const double rel = relative_rmse(x, back);
      MESSAGE(name << " sigma " << sigma << ": relative RMSE " << rel);
      CHECK(rel <= c.bound);
    }
    std::vector<float> special(256 * 3, 0.0f);  // block 0 all zero
    for (size_t i = 256; i < 512; ++i) special[i] = 0.25f + 0.001f * float(i % 37);  // all positive
    for (size_t i = 512; i < 768; ++i) special[i] = -0.5f - 0.002f * float(i % 41);  // all negative
    const auto back = dequantize(c.type, quantize(c.type, special), special.size());
    for (size_t i = 0; i < 256; ++i) REQUIRE(back[i] == 0.0f);
    const double one_signed = relative_rmse({special.begin() + 256, special.end()}, {back.begin() + 256, back.end()});
    MESSAGE(name << " one-signed blocks: relative RMSE " << one_signed);
    CHECK(one_signed < c.one_signed_bound);
  }
  SUBCASE("inf and NaN do not crash; sizes are checked") {
    std::vector<float> x = gaussian_values(256, 3, 1.0f);
    x[7] = std::numeric_limits<float>::infinity();
    x[8] = std::numeric_limits<float>::quiet_NaN();
    for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::BF16})
      CHECK_NOTHROW(quantize(t, x));
    std::vector<float> short_row(288);
    std::vector<uint8_t> out(210);
    CHECK_THROWS_WITH_AS(quantize_row(GgmlType::Q6_K, short_row, out),
                         doctest::Contains("Q6_K needs row lengths that are multiples of 256"), std::invalid_argument);
  }
}

TEST_CASE("quantize: use_more_bits picks llama.cpp's layers") {
  std::vector<int> picked;
  for (int layer = 0; layer < 32; ++layer)
    if (use_more_bits(layer, 32)) picked.push_back(layer);
  // First 4, last 4, and every third layer between (4 + 2, 4 + 5, ...).
  CHECK(picked == std::vector<int>{0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31});
  CHECK(quantize_scheme("q4_k_m")->name == "Q4_K_M");
  CHECK(quantize_scheme("Q5_K_M")->mix == QuantizeMix::KM);
  CHECK(quantize_scheme("q3_k_m")->mix == QuantizeMix::Q3_K_M);
  CHECK(quantize_scheme("Q2_K")->mix == QuantizeMix::Q2_K);
  CHECK(quantize_scheme("Q6_K")->mix == QuantizeMix::None);
  CHECK_FALSE(quantize_scheme("Q4_K_S").has_value());
}

// Every 2-D tensor of `out` (a quantized copy of the F32 `src`) decodes
// within bound(type) relative RMS error of its source.
template <typename Bound>
void check_matrices_near_source(const GgufFile& src, const GgufFile& out, Bound bound) {
  for (const GgufTensorInfo& t : out.tensors()) {
    if (t.shape.size() != 2) continue;
    CAPTURE(t.name);
    const GgufTensorInfo& a = src.tensor(t.name);
    std::vector<float> x(a.n_elements), y(t.n_elements);
    std::memcpy(x.data(), a.data, a.n_bytes);
    dequantize_row(t.type, {t.data, t.n_bytes}, y);
    CHECK(relative_rmse(x, y) < bound(t.type));
  }
}

TEST_CASE("quantize_model: Q4_K_M and Q5_K_M mixes, with fallback for rows that are not multiples of 256") {
  const auto dir = temp_dir();
  SyntheticLlama s;
  s.dim = 256;
  s.ffn = 288;  // ffn_down rows of 288: no K-quant fits, as in stories15M
  s.n_layer = 8;
  const std::string src_path = (dir / "f32.gguf").string();
  synthetic_llama_writer(s).write(src_path);
  const GgufFile src = GgufFile::open(src_path);
  for (const char* scheme_name : {"Q4_K_M", "Q5_K_M", "Q6_K"}) {
    CAPTURE(scheme_name);
    const QuantizeScheme scheme = *quantize_scheme(scheme_name);
    const std::string out_path = (dir / (std::string(scheme_name) + ".gguf")).string();
    const QuantizeResult r = quantize_model(src_path, out_path, scheme);
    CHECK(r.n_quantized == 2 + 7 * 8);
    CHECK(r.n_fallback == 8);  // the eight ffn_down
    const GgufFile out = GgufFile::open(out_path);
    CHECK(out.get_uint("general.file_type") == (scheme.name == "Q4_K_M" ? 15u : scheme.name == "Q5_K_M" ? 17u : 18u));
    const GgmlType base = scheme.base;
    const GgmlType more = scheme.mix == QuantizeMix::KM ? GgmlType::Q6_K : base;
    CHECK(out.tensor("token_embd.weight").type == base);
    CHECK(out.tensor("output.weight").type == more);
    for (int layer = 0; layer < 8; ++layer) {
      const std::string p = "blk." + std::to_string(layer) + ".";
      CAPTURE(layer);
      // 8 layers: the first eighth (0), the last (7), and (layer - 1) % 3 == 2: 3 and 6.
      const bool more_bits = layer == 0 || layer == 3 || layer == 6 || layer == 7;
      CHECK(use_more_bits(layer, 8) == more_bits);
      CHECK(out.tensor(p + "attn_v.weight").type == (more_bits ? more : base));
      CHECK(out.tensor(p + "attn_q.weight").type == base);
      // Fallback as llama.cpp's: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0.
      const GgmlType down = layer == 0 || layer == 3 || layer == 6 || layer == 7 ? more : base;
      CHECK(out.tensor(p + "ffn_down.weight").type == (down == GgmlType::Q4_K   ? GgmlType::Q5_0
                                                      : down == GgmlType::Q5_K ? GgmlType::Q5_1
                                                                               : GgmlType::Q8_0));
      CHECK(out.tensor(p + "attn_norm.weight").type == GgmlType::F32);
    }
    // Every matrix decodes close to its source (synthetic weights are uniform in ±0.5).
    check_matrices_near_source(src, out, [](GgmlType t) { return t == GgmlType::Q4_K ? 0.07 : 0.035; });
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("quantize_model: Q3_K_M and Q2_K mixes as llama.cpp makes them, GQA and a tied output") {
  const auto dir = temp_dir();
  SyntheticLlama s;
  s.dim = 256;
  s.ffn = 512;
  s.n_layer = 16;
  s.n_head = 8;
  s.n_kv_head = 2;  // 4 query heads per kv head: Q2_K gives attn_v Q4_K
  s.tied_output = true;  // no output.weight: token_embd is the output, and gets its type
  const std::string src_path = (dir / "f32.gguf").string();
  synthetic_llama_writer(s).write(src_path);
  const GgufFile src = GgufFile::open(src_path);
  for (const char* scheme_name : {"Q3_K_M", "Q2_K", "Q4_K_M"}) {
    CAPTURE(scheme_name);
    const QuantizeScheme scheme = *quantize_scheme(scheme_name);
    const std::string out_path = (dir / (std::string(scheme_name) + ".gguf")).string();
    const QuantizeResult r = quantize_model(src_path, out_path, scheme);
    CHECK(r.n_fallback == 0);
    const GgufFile out = GgufFile::open(out_path);
    CHECK(out.get_uint("general.file_type") == (scheme.name == "Q3_K_M" ? 12u : scheme.name == "Q2_K" ? 10u : 15u));
    CHECK(out.tensor("token_embd.weight").type == GgmlType::Q6_K);
    for (int layer = 0; layer < 16; ++layer) {
      CAPTURE(layer);
      const std::string p = "blk." + std::to_string(layer) + ".";
      auto type = [&](const char* t) { return out.tensor(p + t).type; };
      if (scheme.name == "Q3_K_M") {
        CHECK(type("attn_v.weight") == (layer < 2 ? GgmlType::Q5_K : GgmlType::Q4_K));
        CHECK(type("ffn_down.weight") == (layer < 1 ? GgmlType::Q5_K : GgmlType::Q4_K));  // 16 / 16 = 1
        CHECK(type("attn_output.weight") == GgmlType::Q4_K);
        for (const char* t : {"attn_q.weight", "attn_k.weight", "ffn_gate.weight", "ffn_up.weight"})
          CHECK(type(t) == GgmlType::Q3_K);
      } else if (scheme.name == "Q2_K") {
        CHECK(type("attn_v.weight") == GgmlType::Q4_K);
        CHECK(type("ffn_down.weight") == GgmlType::Q3_K);
        CHECK(type("attn_output.weight") == GgmlType::Q3_K);
        for (const char* t : {"attn_q.weight", "attn_k.weight", "ffn_gate.weight", "ffn_up.weight"})
          CHECK(type(t) == GgmlType::Q2_K);
      } else {
        CHECK(type("attn_v.weight") == (use_more_bits(layer, 16) ? GgmlType::Q6_K : GgmlType::Q4_K));
      }
    }
    // Every matrix decodes near its source, as its type allows.
    check_matrices_near_source(src, out, [](GgmlType t) {
      return t == GgmlType::Q2_K ? 0.30 : t == GgmlType::Q3_K ? 0.175 : 0.08;
    });
  }
  // Rows that are not whole blocks of 256: Q2_K and Q3_K fall back to Q4_0, as llama.cpp's.
  const QuantizeScheme q3 = *quantize_scheme("Q3_K");
  bool fell = false;
  CHECK(scheme_tensor_type(q3, "blk.0.attn_q.weight", TensorPlace{0, 16, 288, 1, false}, &fell) == GgmlType::Q4_0);
  CHECK(fell);
  CHECK(scheme_tensor_type(q3, "blk.0.attn_q.weight", TensorPlace{0, 16, 200, 1, false}, &fell) == GgmlType::F16);
  CHECK(scheme_tensor_type(*quantize_scheme("Q2_K"), "blk.3.attn_v.weight", TensorPlace{3, 16, 512, 2, false}) ==
        GgmlType::Q3_K);  // 2 query heads per kv head
  std::filesystem::remove_all(dir);
}

// Q4_1, Q5_0, Q5_1 and IQ4_NL against ggml's formulas (ggml-quants.c's
// quantize_row_*_ref and dequantize_row_*), blocks worked out by hand.
TEST_CASE("Q4_1, Q5_0, Q5_1 quantize byte for byte as ggml's reference; IQ4_NL decodes its levels") {
  SUBCASE("Q5_0: d = max / -16, codes x / d + 16.5 truncated, the fifth bits in qh") {
    std::vector<float> x(32, 0.0f);
    x[0] = -1.6f;  // the largest magnitude: d = 0.1, code 0
    x[16] = 0.8f;  // code 24: nibble 8, fifth bit set (qh bit 16)
    const auto bytes = quantize(GgmlType::Q5_0, x);
    // zeros are code 16: nibble 0, fifth bit set -> every qh bit but bit 0
    std::vector<uint8_t> expected = {0x66, 0x2E, 0xFE, 0xFF, 0xFF, 0xFF, 0x80};
    expected.resize(22, 0x00);
    CHECK(bytes == expected);
    const auto back = dequantize(GgmlType::Q5_0, bytes, 32);
    CHECK(back[0] == doctest::Approx(-16 * f16_bits_to_float(0x2E66)));
    CHECK(back[16] == doctest::Approx(8 * f16_bits_to_float(0x2E66)));
    CHECK(back[5] == 0.0f);
  }
  SUBCASE("Q4_1: d = (max - min) / 15, m = min, codes (x - min) / d + 0.5 truncated") {
    std::vector<float> x(32, 0.5f);
    x[0] = -1.0f;  // code 0
    x[16] = 2.0f;  // code 15
    const auto bytes = quantize(GgmlType::Q4_1, x);
    std::vector<uint8_t> expected = {0x66, 0x32, 0x00, 0xBC, 0xF0};  // d f16(0.2), m f16(-1), codes 0 | 15 << 4
    expected.resize(20, 0x88);                                        // 0.5: code 8 in both nibbles
    CHECK(bytes == expected);
    const auto back = dequantize(GgmlType::Q4_1, bytes, 32);
    CHECK(back[0] == -1.0f);
    CHECK(back[16] == doctest::Approx(15 * f16_bits_to_float(0x3266) - 1.0f));
    CHECK(back[3] == doctest::Approx(8 * f16_bits_to_float(0x3266) - 1.0f));
  }
  SUBCASE("Q5_1: d = (max - min) / 31, m = min, the fifth bits in qh") {
    std::vector<float> x(32, 0.0f);
    x[0] = -1.0f;  // code 0
    x[16] = 2.1f;  // code 31: nibble 15, qh bit 16
    const auto bytes = quantize(GgmlType::Q5_1, x);
    std::vector<uint8_t> expected = {0x66, 0x2E, 0x00, 0xBC, 0x00, 0x00, 0x01, 0x00, 0xF0};
    expected.resize(24, 0xAA);  // 0: code 10 in both nibbles, no fifth bit
    CHECK(bytes == expected);
    const auto back = dequantize(GgmlType::Q5_1, bytes, 32);
    CHECK(back[16] == doctest::Approx(31 * f16_bits_to_float(0x2E66) - 1.0f));
    CHECK(back[7] == doctest::Approx(10 * f16_bits_to_float(0x2E66) - 1.0f));
  }
  SUBCASE("IQ4_NL: d times the level of each nibble") {
    std::vector<uint8_t> block = {0x00, 0x38, 0x0F, 0x78};  // d = 0.5; qs[0] = 0x0F, qs[1] = 0x78
    block.resize(18, 0x00);
    const auto y = dequantize(GgmlType::IQ4_NL, block, 32);
    CHECK(y[0] == 56.5f);    // level 15: 113
    CHECK(y[16] == -63.5f);  // level 0: -127
    CHECK(y[1] == 0.5f);     // level 8: 1
    CHECK(y[17] == -5.0f);   // level 7: -10
    CHECK(y[2] == -63.5f);
    CHECK_FALSE(type_writable(GgmlType::IQ4_NL));
    CHECK_THROWS_WITH_AS(quantize(GgmlType::IQ4_NL, std::vector<float>(32, 0.0f)),
                         doctest::Contains("cannot write type IQ4_NL"), std::invalid_argument);
  }
  SUBCASE("round trip on random data: every element within a step of its block") {
    std::vector<float> x(32 * 64);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i) * 0.37f) * (1.0f + float(i % 7));
    for (GgmlType t : {GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1}) {
      CAPTURE(type_traits(uint32_t(t))->name);
      const auto back = dequantize(t, quantize(t, x), x.size());
      for (size_t b = 0; b < x.size() / 32; ++b) {
        float lo = INFINITY, hi = -INFINITY;
        for (size_t j = 0; j < 32; ++j) lo = std::min(lo, x[32 * b + j]), hi = std::max(hi, x[32 * b + j]);
        const float levels = t == GgmlType::Q4_1 ? 15.0f : 31.0f;
        const float step = t == GgmlType::Q5_0 ? 2 * std::max(std::abs(lo), std::abs(hi)) / 32 : (hi - lo) / levels;
        for (size_t j = 0; j < 32; ++j) CHECK(std::abs(back[32 * b + j] - x[32 * b + j]) <= step * 1.01f + 1e-3f);
      }
    }
  }
}

// Q2_K, Q3_K and IQ4_XS against ggml's dequantize_row_q2_K / _q3_K / _iq4_xs
// on blocks worked out by hand (kvscope reads these types; it does not write them).
TEST_CASE("Q2_K, Q3_K, IQ4_XS: known blocks decode to ggml's values") {
  SUBCASE("Q2_K: d * (scale nibble) * q - dmin * (min nibble), groups of 16") {
    std::vector<uint8_t> b(84, 0);
    b[0] = 0x21;         // group 0: scale 1, min 2
    b[1] = 0x13;         // group 1: scale 3, min 1
    b[2] = 0x12;         // group 2 (k = 1, first 16): scale 2, min 1
    b[8] = 0x05;         // group 8 (second half): scale 5, min 0
    b[16 + 0] = 0xE4;    // qs[0]: codes 0, 1, 2, 3 for k = 0..3 (elements 0, 32, 64, 96)
    b[16 + 16] = 0x03;   // qs[16]: element 16 code 3
    b[16 + 32] = 0x02;   // qs[32]: element 128 code 2
    b[80] = 0x00, b[81] = 0x38;  // d = 0.5
    b[82] = 0x00, b[83] = 0x34;  // dmin = 0.25
    const auto y = dequantize(GgmlType::Q2_K, b, 256);
    CHECK(y[0] == -0.5f);    // 0.5*1*0 - 0.25*2
    CHECK(y[1] == -0.5f);
    CHECK(y[16] == 4.25f);   // 0.5*3*3 - 0.25*1
    CHECK(y[32] == 0.75f);   // 0.5*2*1 - 0.25*1
    CHECK(y[128] == 5.0f);   // 0.5*5*2
  }
  SUBCASE("Q3_K: d * (6-bit scale - 32) * (q - 4 unless the hmask bit is set)") {
    std::vector<uint8_t> b(110, 0);
    std::fill(b.begin(), b.begin() + 32, 0xFF);  // every high bit set: q as is
    b[1] = 0xFE;           // hmask[1] bit 0 clear: element 1 gets q - 4
    b[32 + 0] = 0x01;      // qs[0]: element 0 code 1 (k = 0), element 96 code 0 (k = 3)
    b[32 + 1] = 0x02;      // element 1 code 2
    b[32 + 16] = 0x03;     // element 16 code 3
    b[32 + 32] = 0x01;     // element 128 code 1
    b[96 + 0] = 0x3A;      // scale 0 low nibble 10; scale 8 low nibble 3
    b[96 + 8] = 0x02;      // scale 0 top bits 2: 10 | 2 << 4 = 42
    b[108] = 0x00, b[109] = 0x3C;  // d = 1
    const auto y = dequantize(GgmlType::Q3_K, b, 256);
    CHECK(y[0] == 10.0f);    // (42 - 32) * 1
    CHECK(y[1] == -20.0f);   // 10 * (2 - 4)
    CHECK(y[16] == -96.0f);  // scale 1 = 0: -32 * 3
    CHECK(y[96] == 0.0f);
    CHECK(y[128] == -29.0f); // scale 8 = 3: (3 - 32) * 1
    CHECK(kq3_scale(&b[96], 0) == 42);
    CHECK(kq3_scale(&b[96], 8) == 3);
  }
  SUBCASE("IQ4_XS: d * (6-bit scale - 32) * level, sub-blocks of 32 as IQ4_NL") {
    std::vector<uint8_t> b(136, 0);
    b[0] = 0x00, b[1] = 0x38;  // d = 0.5
    b[2] = 0x02, b[3] = 0x00;  // scales_h: sub-block 0 top bits 2
    b[4] = 0x31;               // scales_l[0]: sub-block 0 low 1 (ls 33), sub-block 1 low 3 (ls 3)
    b[8 + 0] = 0x0F;           // element 0 level 15, element 16 level 0
    b[8 + 16] = 0x88;          // sub-block 1: elements 32 and 48 level 8
    const auto y = dequantize(GgmlType::IQ4_XS, b, 256);
    CHECK(y[0] == 56.5f);     // 0.5 * 1 * 113
    CHECK(y[16] == -63.5f);   // 0.5 * 1 * -127
    CHECK(y[32] == -14.5f);   // 0.5 * -29 * 1
    CHECK(y[48] == -14.5f);
    CHECK(y[1] == -63.5f);    // level 0
  }
}
