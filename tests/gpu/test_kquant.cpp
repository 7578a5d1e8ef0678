// BF16 and the K-quants (Q4_K Q5_K Q6_K) on the GPU: matvec (every code
// path: rows shared by invocations, whole rows per invocation), matmul (tiles
// and rows per invocation) and embed, against the CPU dequantizer
// (models/ggml_kquants.cpp) and a dot product in f64. Weights come two ways:
// quantized from random floats, and blocks of random bytes (every bit pattern
// a file written by llama.cpp may hold, negative Q6_K scales and all).
//
// [SECTION] helpers
// [SECTION] embed
// [SECTION] matvec, matmul
// [SECTION] the forward pass on a Q4_K_M model
// [SECTION] decode speed (skipped by default)
#include <doctest/doctest.h>

#include <set>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "app/core/session.h"
#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "gpu/recorder.h"
#include "models/ggml_types.h"
#include "models/gpu_layout.h"
#include "models/quantize.h"
#include "models/reference.h"
#include "shaders/common/params.h"
#include "tests/gpu/gpu_fixture.h"
#include "tests/test_util.h"

using namespace kvscope;
namespace params = kvscope::params;
using shaders::Id;
using namespace kvscope::test;

namespace {

// ---------------------------------------------------------------- [SECTION] helpers

// The GPU dequantizes the very codes the CPU does, in f32; the reference sums
// in f64. The difference is f32 rounding of ~n products and partial sums
// (~sqrt(n) * 2^-24 relative, NMSE ~1e-13 for n = 768); 1e-9 leaves room
// while one wrong element among 256 gives NMSE ~1e-3.
constexpr double kSumOrderBound = 1e-9;
// Embed: the same products (d * scale) * q - dmin * min on both sides; the
// device may fuse the multiply-add (one rounding instead of two): ~1e-16.
constexpr double kEmbedBound = 1e-13;

const GgmlType kTypes[] = {GgmlType::BF16, GgmlType::Q4_K, GgmlType::Q5_K,  GgmlType::Q6_K,
                           GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_XS};

// Super-blocks of random bytes with super-scales set to modest f16 values, so
// every code, 6-bit scale/min and int8 scale pattern occurs.
std::vector<uint8_t> random_blocks(GgmlType type, uint64_t rows, uint64_t cols, uint32_t seed) {
  std::vector<uint8_t> bytes(rows * row_bytes(type, cols));
  std::mt19937 rng(seed);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  const size_t block_bytes = type_traits(static_cast<uint32_t>(type))->block_bytes;
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (size_t at = 0; at < bytes.size(); at += block_bytes) {
    auto put = [&](size_t offset, float v) {
      const uint16_t h = f32_to_f16(v);
      std::memcpy(bytes.data() + at + offset, &h, 2);
    };
    if (type == GgmlType::Q6_K) {
      put(208, scale(rng) * (rng() & 1 ? 1.0f : -1.0f));
    } else if (type == GgmlType::Q3_K) {
      put(108, scale(rng) * (rng() & 1 ? 1.0f : -1.0f));
    } else if (type == GgmlType::Q2_K) {
      put(80, scale(rng));  // d
      put(82, scale(rng));  // dmin
    } else if (type == GgmlType::IQ4_XS) {
      put(0, scale(rng));   // d; scales_h stays random
    } else {
      put(0, scale(rng));  // d
      put(2, scale(rng));  // dmin
    }
  }
  return bytes;
}

// A weight from random floats, or (K-quants) from random super-blocks.
TestWeight make_weight(GgmlType type, uint64_t rows, uint64_t cols, uint32_t seed, bool random_bytes) {
  if (random_bytes && type != GgmlType::BF16) return TestWeight(type, rows, cols, random_blocks(type, rows, cols, seed));
  return TestWeight(type, rows, cols, seed);
}

struct Shape {
  uint64_t rows, cols;
};
// K-quants need cols % 256 == 0 (one, two and three super-blocks); BF16 also
// takes odd shapes.
std::vector<Shape> shapes(GgmlType t) {
  std::vector<Shape> s{{1, 256}, {7, 512}, {33, 768}, {300, 256}};
  if (t == GgmlType::BF16) s.insert(s.end(), {{5, 7}, {13, 11}, {288, 288}});
  return s;
}

// ---------------------------------------------------------------- [SECTION] embed

TEST_CASE("weight shaders: one row per type with shaders, and no other type's shader for a type without") {
  // Every type the GPU layout accepts has its row, each with its own shaders.
  std::set<int> ids;
  for (const WeightShaders& w : kWeightShaders) {
    CHECK(&weight_shaders(w.type) == &w);
    ids.insert(int(w.embed)), ids.insert(int(w.matvec)), ids.insert(int(w.matmul));
  }
  CHECK(ids.size() == 3 * kWeightTypeCount);
  CHECK(kWeightTypeCount == 15);
  // A type ggml has and the shaders do not: a clear error, not a fallback.
  for (GgmlType t : {GgmlType::Q8_1, GgmlType::Q8_K}) {
    CAPTURE(type_name(t));
    const std::string expected = "no shader for weight type " + type_name(t);
    CHECK_THROWS_WITH_AS(weight_shaders(t), doctest::Contains(expected.c_str()), std::invalid_argument);
  }
}

TEST_CASE("kquant embed: BF16 Q4_K Q5_K Q6_K rows, whole and chunked tables") {
  for (uint32_t wg : workgroup_sizes()) {
    for (GgmlType type : kTypes) {
      gpu::Pipeline pipe(context(), {embed_id(type), 4, sizeof(params::EmbedParams), {wg}, kWeightTexels1});
      for (uint64_t dim : {256u, 768u}) {
        for (bool random_bytes : {false, true}) {
          const uint64_t n_vocab = 300;
          TestWeight table = make_weight(type, n_vocab, dim, uint32_t(17 + dim), random_bytes);
          const std::vector<int32_t> ids{0, 299, 5, 150, 5, 151, 42};
          gpu::Buffer id_buffer = upload(ids, "token ids");
          for (bool split : {false, true}) {
            const std::string what = fmt::format("embed {} dim {} wg {}{}{}", type_name(type), dim, wg,
                                                 random_bytes ? " random blocks" : "", split ? " chunked" : "");
            GuardedOutput out(ids.size() * dim);
            gpu::Recorder rec(context());
            rec.begin();
            for (RowChunk chunk : chunks_of(table, split)) {
              params::EmbedParams p{uint32_t(ids.size()), uint32_t(dim), uint32_t(chunk.count), uint32_t(chunk.first)};
              rec.dispatch(pipe,
                           {id_buffer, table.value_rows(chunk.first, chunk.count),
                            table.scale_rows(chunk.first, chunk.count), out.buffer},
                           p, uint32_t(ids.size()));
            }
            rec.submit_and_wait();
            std::vector<double> expected(ids.size() * dim);
            for (size_t t = 0; t < ids.size(); ++t)
              for (uint64_t d = 0; d < dim; ++d) expected[t * dim + d] = table.values[ids[t] * dim + d];
            check_close(out.read(what), expected, kEmbedBound, what);
          }
        }
      }
    }
  }
  check_no_validation_messages();
}

// ---------------------------------------------------------------- [SECTION] matvec, matmul

// Runs matvec or matmul over `w` in one or two row chunks and checks y
// against the f64 product; the slack around the output rows must stay as it was.
void check_product(gpu::Pipeline& pipe, bool is_matmul, uint32_t groups_per_tile, uint32_t tokens_per_tile,
                   const TestWeight& w, uint32_t n_vec, bool accumulate, bool split, const std::string& what) {
  const uint32_t row_offset = 3, slack = 2;
  const uint32_t y_stride = row_offset + uint32_t(w.rows) + slack;
  const std::vector<float> x = random_floats(size_t(n_vec) * w.cols, uint32_t(w.rows * 31 + w.cols + n_vec));
  const std::vector<float> y_initial = random_floats(size_t(n_vec) * y_stride, 99);
  gpu::Buffer x_buffer = upload(x, "x");
  GuardedOutput y(size_t(n_vec) * y_stride, y_initial);
  gpu::Recorder rec(context());
  rec.begin();
  for (RowChunk chunk : chunks_of(w, split)) {
    const uint32_t rows = uint32_t(chunk.count), first = uint32_t(chunk.first);
    std::initializer_list<gpu::Binding> bindings{w.value_rows(first, rows), w.scale_rows(first, rows), x_buffer,
                                                 y.buffer};
    if (is_matmul) {
      params::MatMulParams p{rows, uint32_t(w.cols), n_vec, y_stride, row_offset + first, accumulate ? 1u : 0u};
      rec.dispatch(pipe, bindings, p, gpu::ceil_div(rows, groups_per_tile), gpu::ceil_div(n_vec, tokens_per_tile));
    } else {
      params::MatVecParams p{rows, uint32_t(w.cols), n_vec, y_stride, row_offset + first, accumulate ? 1u : 0u};
      rec.dispatch(pipe, bindings, p, gpu::ceil_div(rows, groups_per_tile), n_vec);
    }
  }
  rec.submit_and_wait();
  std::vector<double> expected(y_initial.begin(), y_initial.end());
  for (uint32_t v = 0; v < n_vec; ++v) {
    for (uint64_t r = 0; r < w.rows; ++r) {
      double sum = 0;
      for (uint64_t c = 0; c < w.cols; ++c) sum += double(w.values[r * w.cols + c]) * x[v * w.cols + c];
      double& dst = expected[v * y_stride + row_offset + r];
      dst = accumulate ? double(y_initial[v * y_stride + row_offset + r]) + sum : sum;
    }
  }
  const std::vector<float> got = y.read(what);
  for (uint32_t v = 0; v < n_vec; ++v) {
    for (uint32_t c = 0; c < y_stride; ++c) {
      if (c >= row_offset && c < row_offset + w.rows) continue;
      const size_t i = size_t(v) * y_stride + c;
      if (std::memcmp(&got[i], &y_initial[i], 4) != 0) {
        FAIL_CHECK(fmt::format("{}: y[{}][{}] outside the output rows was changed", what, v, c));
        return;
      }
    }
  }
  check_close(got, expected, kSumOrderBound, what);
}

TEST_CASE("kquant matvec: BF16 Q4_K Q5_K Q6_K, shared and whole rows, chunked, accumulate") {
  for (uint32_t wg : workgroup_sizes()) {
    for (GgmlType type : kTypes) {
      for (uint32_t rows_per_group : {1u, 4u, wg, wg * KVSCOPE_MATVEC_CPU_ROWS_PER_INVOCATION}) {
        gpu::Pipeline pipe(context(),
                           {matvec_id(type), 4, sizeof(params::MatVecParams), {wg, rows_per_group}, kWeightTexels0});
        for (Shape s : shapes(type)) {
          for (uint32_t n_vec : {1u, 2u}) {
            const bool accumulate = n_vec == 2, split = n_vec == 2, random_bytes = n_vec == 2;
            TestWeight w = make_weight(type, s.rows, s.cols, uint32_t(s.rows * 7 + s.cols), random_bytes);
            const std::string what = fmt::format("matvec {} {}x{} n_vec {} wg {} rows/group {}{}{}", type_name(type),
                                                 s.rows, s.cols, n_vec, wg, rows_per_group,
                                                 random_bytes ? " random blocks" : "", split ? " chunked" : "");
            check_product(pipe, false, rows_per_group, 1, w, n_vec, accumulate, split, what);
          }
        }
      }
    }
  }
  check_no_validation_messages();
}

TEST_CASE("kquant matmul: BF16 Q4_K Q5_K Q6_K, tiles and rows per invocation, chunked, accumulate") {
  for (uint32_t wg : workgroup_sizes()) {
    for (GgmlType type : kTypes) {
      for (uint32_t row_per_invocation : {0u, 1u}) {
        const uint32_t rows_per_group = row_per_invocation ? wg : KVSCOPE_MATMUL_TILE_ROWS;
        const uint32_t tokens_per_tile = row_per_invocation ? KVSCOPE_MATMUL_CPU_TOKENS : wg / 2;
        gpu::Pipeline pipe(context(), {matmul_id(type), 4, sizeof(params::MatMulParams), {wg, row_per_invocation},
                                       kWeightTexels0});
        for (Shape s : shapes(type)) {
          for (uint32_t n_tokens : {2u, 17u}) {
            const bool accumulate = n_tokens % 2 == 1, split = n_tokens == 17, random_bytes = n_tokens == 2;
            TestWeight w = make_weight(type, s.rows, s.cols, uint32_t(s.rows * 5 + s.cols), random_bytes);
            const std::string what = fmt::format("matmul {} {}x{} tokens {} wg {} row/invocation {}{}{}{}",
                                                 type_name(type), s.rows, s.cols, n_tokens, wg, row_per_invocation,
                                                 accumulate ? " accumulate" : "", random_bytes ? " random blocks" : "",
                                                 split ? " chunked" : "");
            check_product(pipe, true, rows_per_group, tokens_per_tile, w, n_tokens, accumulate, split, what);
          }
        }
      }
    }
  }
  check_no_validation_messages();
}

// ---------------------------------------------------------------- [SECTION] the forward pass on a Q4_K_M model

// A quantized stories15M file's GPU logits against the CPU reference on the
// same file (the same dequantized weights), prefill (matmul) and decode
// (matvec): within f32 summation order, as for the f32 model (tests/app/test_e2e.cpp).
void check_file_against_reference(const std::string& path, const std::string& label, const std::string& text) {
  EngineOptions options;
  options.model_path = path;
  Engine engine(options);
  reference::Model ref(engine.file(), 64);
  kv::CacheConfig cc;
  cc.k_format = cc.v_format = kv::Format::F32;
  const std::vector<int32_t> ids = engine.tokenizer().encode(text, true);
  const size_t n_vocab = engine.config().n_vocab;
  Session prefill(engine, cc);
  const std::vector<float> all = prefill.logits_all(ids);
  Session decode(engine, cc);
  float worst_prefill = 0, worst_decode = 0;
  for (size_t p = 0; p < ids.size(); ++p) {
    const int32_t pos = static_cast<int32_t>(p);
    const auto gpu = engine.model().forward({&ids[p], 1}, {&pos, 1}, decode.cache(), LogitsWanted::Last);
    const std::vector<float>& cpu = ref.forward(ids[p], pos);
    for (size_t i = 0; i < n_vocab; ++i) {
      worst_decode = std::max(worst_decode, std::abs(gpu[i] - cpu[i]));
      worst_prefill = std::max(worst_prefill, std::abs(all[p * n_vocab + i] - cpu[i]));
    }
  }
  MESSAGE(label << " worst |GPU - CPU| logit over " << ids.size() << " tokens: prefill " << worst_prefill
                << ", decode " << worst_decode);
  CHECK(worst_prefill < 2e-3f);
  CHECK(worst_decode < 2e-3f);
}

// stories15M has dim 288: only ffn_down (rows of 768) takes K-quants, the
// mix's types by layer; the rest falls back as llama.cpp's (Q4_K to Q5_0,
// Q6_K to Q8_0, Q2_K and Q3_K to Q4_0), and the tied token_embd is the
// output: Q8_0. So one model mixes three or four weight types, and the GPU
// must pick each tensor's shaders. Held to the CPU reference on the same
// file (same dequantized weights), prefill and decode.
TEST_CASE("kquant e2e: stories15M in Q4_K_M, Q3_K_M and Q2_K matches the CPU reference, prefill and decode") {
  for (const char* scheme : {"Q4_K_M", "Q3_K_M", "Q2_K"}) {
    CAPTURE(scheme);
    test::TempDir dir;
    const std::string path = dir.file("stories15M.gguf");
    const QuantizeResult q = quantize_model(test::model_path(), path, *quantize_scheme(scheme));
    CHECK(q.n_fallback == 36);  // 43 matrices: 6 ffn_down fit, token_embd is the output (Q8_0)
    {
      const GgufFile file = GgufFile::open(path);
      CHECK(file.tensor("token_embd.weight").type == GgmlType::Q8_0);
      const std::string_view name = scheme;
      if (name == "Q4_K_M") {
        CHECK(file.tensor("blk.0.ffn_down.weight").type == GgmlType::Q4_K);
        CHECK(file.tensor("blk.2.ffn_down.weight").type == GgmlType::Q6_K);  // use_more_bits(2, 6)
        CHECK(file.tensor("blk.0.attn_q.weight").type == GgmlType::Q5_0);
        CHECK(file.tensor("blk.2.attn_v.weight").type == GgmlType::Q8_0);  // Q6_K in layer 2
      } else if (name == "Q3_K_M") {
        CHECK(file.tensor("blk.0.ffn_down.weight").type == GgmlType::Q4_K);  // 6 / 16 = 0 layers of Q5_K
        CHECK(file.tensor("blk.0.attn_q.weight").type == GgmlType::Q4_0);   // Q3_K's fallback
        CHECK(file.tensor("blk.0.attn_v.weight").type == GgmlType::Q5_1);   // Q5_K in layers 0, 1
      } else {
        CHECK(file.tensor("blk.0.ffn_down.weight").type == GgmlType::Q3_K);
        CHECK(file.tensor("blk.0.attn_q.weight").type == GgmlType::Q4_0);   // Q2_K's fallback
      }
    }
    check_file_against_reference(path, scheme, "Lily and Ben went to the park.");
  }
}

TEST_CASE("legacy e2e: stories15M in Q4_1, Q5_0 and Q5_1 matches the CPU reference, prefill and decode") {
  test::TempDir dir;
  for (const char* scheme : {"Q4_1", "Q5_0", "Q5_1"}) {
    CAPTURE(scheme);
    const std::string path = dir.file(std::string("stories15M-") + scheme + ".gguf");
    quantize_model(test::model_path(), path, *quantize_scheme(scheme));
    CHECK(GgufFile::open(path).tensor("blk.3.ffn_up.weight").type == *type_from_name(scheme));
    check_file_against_reference(path, scheme, "Tom had a red kite.");
  }
}

}  // namespace
