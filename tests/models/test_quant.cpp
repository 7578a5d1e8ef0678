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
                      {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {24, "I8", 1, 1},     {25, "I16", 1, 2},
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
  for (uint32_t unknown : {4u, 5u, 16u, 23u, 29u, 31u, 1000u}) CHECK_FALSE(type_traits(unknown).has_value());
  CHECK(type_from_name("q8_0") == GgmlType::Q8_0);
  CHECK(type_from_name("bf16") == GgmlType::BF16);
  CHECK_FALSE(type_from_name("q8").has_value());
  CHECK(type_supported(GgmlType::F32));
  CHECK(type_supported(GgmlType::F16));
  CHECK(type_supported(GgmlType::Q8_0));
  CHECK(type_supported(GgmlType::Q4_0));
  CHECK_FALSE(type_supported(GgmlType::Q4_1));
  CHECK_FALSE(type_supported(GgmlType::Q6_K));
  CHECK(supported_types_list() == "F32 F16 Q8_0 Q4_0");
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
  std::vector<uint8_t> q41(20);
  CHECK_THROWS_AS(quantize_row(GgmlType::Q4_1, x, q41), std::invalid_argument);
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
    CHECK_THROWS_WITH_AS(quantize_model(src_path, (dir / "x.gguf").string(), GgmlType::Q5_K),
                         doctest::Contains("cannot quantize to Q5_K"), std::runtime_error);
    GgufWriter w = synthetic_llama_writer();
    w.add_tensor("extra.weight", GgmlType::F32, {33, 2}, kvscope::testing::synthetic_tensor_bytes(GgmlType::F32, {33, 2}, 9));
    const std::string odd_path = (dir / "odd.gguf").string();
    w.write(odd_path);
    CHECK_THROWS_WITH_AS(quantize_model(odd_path, (dir / "y.gguf").string(), GgmlType::Q4_0),
                         doctest::Contains("tensor 'extra.weight' has rows of 33 elements"), std::runtime_error);
    CHECK_NOTHROW(quantize_model(odd_path, (dir / "z.gguf").string(), GgmlType::F16));

    GgufWriter k = synthetic_llama_writer();
    k.add_tensor("kquant.weight", GgmlType::Q6_K, {256, 1}, std::vector<uint8_t>(210));
    const std::string k_path = (dir / "k.gguf").string();
    k.write(k_path);
    CHECK_THROWS_WITH_AS(quantize_model(k_path, (dir / "w.gguf").string(), GgmlType::Q8_0),
                         doctest::Contains("tensor kquant.weight has type Q6_K, which kvscope cannot convert"),
                         std::runtime_error);
  }
  std::filesystem::remove_all(dir);
}
