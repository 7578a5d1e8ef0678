// Every forward-pass shader against its CPU reference (models/reference.h), in
// the manner of ggml's test-backend-ops: one case per op over dtype x shape,
// odd sizes that are not multiples of the workgroup, NaN/inf checked first,
// then the normalized mean squared error  sum (gpu-cpu)^2 / sum cpu^2  against
// a bound per dtype; the worst index is named on failure. Every output buffer
// carries a guard region of sentinels that the shader must leave alone.
//
// [SECTION] tolerances and helpers
// [SECTION] embed, rmsnorm, swiglu, add
// [SECTION] matvec, matmul (all weight types, chunked row ranges)
// [SECTION] rope_kv_write, attention
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "gpu/recorder.h"
#include "models/ggml_types.h"
#include "models/gpu_layout.h"
#include "models/reference.h"
#include "shaders/common/params.h"
#include "tests/gpu/gpu_fixture.h"

using namespace kvscope;
namespace params = kvscope::params;
using shaders::Id;
using namespace kvscope::test;

namespace {

// ---------------------------------------------------------------- [SECTION] tolerances and helpers

// The GPU and the CPU compute in f32 from identical inputs (the GPU dequantizes
// the very codes the CPU dequantizes, F16/Q8_0/Q4_0 alike); they differ only in
// summation order and fused multiply-adds. A dot product of n terms then
// differs by ~sqrt(n) * 2^-24 relative: NMSE ~1e-12 for n <= 1000. 1e-9 leaves
// room, while one wrong element among 288 already gives NMSE ~1e-3.
constexpr double kSumOrderBound = 1e-9;
// Copies and exact products (embed: f16 scale * small int is exact in f32).
constexpr double kExactBound = 1e-14;
// Ops built on exp/pow/sin/cos: the device's transcendental functions may be
// a few ulp off libm's (Vulkan allows 3 ulp for exp and 2^-11 absolute for
// sin/cos). RoPE angles reach 300 rad, where one ulp of the angle is 3e-5.
constexpr double kTranscendentalBound = 1e-7;
// Conversion to f16 in the shader (packHalf2x16) need not round to nearest
// even like f32_to_f16: at most one f16 ulp (2^-10 relative) per element.
constexpr double kF16StoreBound = 1e-6;

const GgmlType kWeightTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::Q8_0, GgmlType::Q4_0,
                                 GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::IQ4_NL};

float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

struct Shape {
  uint64_t rows, cols;
};
// F32/F16 take any shape; the block types need cols % 32 == 0.
std::vector<Shape> matrix_shapes(GgmlType t, bool include_vocab) {
  std::vector<Shape> shapes;
  if (t == GgmlType::F32 || t == GgmlType::F16) shapes.insert(shapes.end(), {{5, 7}, {13, 11}, {100, 5}});
  shapes.insert(shapes.end(), {{7, 32}, {11, 64}, {5, 96}, {288, 288}, {768, 288}, {288, 768}});
  if (include_vocab) shapes.push_back({32000, 288});
  return shapes;
}

// ---------------------------------------------------------------- [SECTION] embed, rmsnorm, swiglu, add

TEST_CASE("embed: rows of every weight type, whole and chunked tables") {
  for (uint32_t wg : workgroup_sizes()) {
    for (GgmlType type : kWeightTypes) {
      gpu::Pipeline pipe(context(), {embed_id(type), 4, sizeof(params::EmbedParams), {wg}, kWeightTexels1});
      const uint64_t n_vocab = 300;
      for (uint64_t dim : {32u, 64u, 288u}) {
        TestWeight table(type, n_vocab, dim, 11 + dim);
        const std::vector<int32_t> ids{0, 299, 5, 150, 5, 151, 42};
        gpu::Buffer id_buffer = upload(ids, "token ids");
        for (bool split : {false, true}) {
          const std::string what =
              fmt::format("embed {} dim {} wg {}{}", type_name(type), dim, wg, split ? " chunked" : "");
          GuardedOutput out(ids.size() * dim);
          gpu::Recorder rec(context());
          rec.begin();
          for (RowChunk chunk : chunks_of(table, split)) {
            params::EmbedParams p{uint32_t(ids.size()), uint32_t(dim), uint32_t(chunk.count),
                                  uint32_t(chunk.first)};
            rec.dispatch(pipe,
                         {id_buffer, table.value_rows(chunk.first, chunk.count),
                          table.scale_rows(chunk.first, chunk.count), out.buffer},
                         p, uint32_t(ids.size()));
          }
          rec.submit_and_wait();
          std::vector<float> expected(ids.size() * dim);
          for (size_t t = 0; t < ids.size(); ++t) {
            reference::embed(std::span(expected).subspan(t * dim, dim), type, table.gguf.data(), n_vocab, dim,
                             ids[t]);
          }
          check_close(out.read(what), expected, kExactBound, what);
        }
      }
    }
  }
  check_no_validation_messages();
}

TEST_CASE("rmsnorm: odd row lengths, several rows; accumulating into the output (gemma3's post-norms)") {
  for (uint32_t wg : workgroup_sizes()) {
    gpu::Pipeline pipe(context(), {Id::rmsnorm, 3, sizeof(params::RmsNormParams), {wg}});
    for (uint32_t n : {1u, 5u, 7u, 13u, 100u, 288u, 768u}) {
      for (uint32_t n_rows : {1u, 3u}) {
        const std::string what = fmt::format("rmsnorm n {} rows {} wg {}", n, n_rows, wg);
        const std::vector<float> x = random_floats(n_rows * n, n, -3, 3);
        const std::vector<float> weight = random_floats(n, n + 1, 0.5f, 1.5f);
        const std::vector<float> residual = random_floats(n_rows * n, n + 2, -5, 5);
        gpu::Buffer x_buffer = upload(x, "x"), w_buffer = upload(weight, "weight");
        GuardedOutput out(n_rows * n), accumulated(residual.size(), residual);
        const float eps = 1e-5f;
        gpu::Recorder rec(context());
        rec.begin();
        rec.dispatch(pipe, {x_buffer, w_buffer, out.buffer}, params::RmsNormParams{n_rows, n, eps}, n_rows);
        params::RmsNormParams add{n_rows, n, eps};
        add.accumulate = 1;
        rec.dispatch(pipe, {x_buffer, w_buffer, accumulated.buffer}, add, n_rows);
        rec.submit_and_wait();
        std::vector<float> expected(n_rows * n);
        for (uint32_t r = 0; r < n_rows; ++r) {
          reference::rmsnorm(std::span(expected).subspan(r * n, n), std::span(x).subspan(r * n, n), weight,
                             eps);
        }
        check_close(out.read(what), expected, kSumOrderBound, what);
        for (size_t i = 0; i < expected.size(); ++i) expected[i] += residual[i];
        check_close(accumulated.read(what + " accumulate"), expected, kSumOrderBound, what + " accumulate");
      }
    }
  }
  check_no_validation_messages();
}

TEST_CASE("rmsnorm per head, in place inside q|k|v rows (qwen3's q and k norms): the other heads untouched") {
  for (uint32_t wg : workgroup_sizes()) {
    gpu::Pipeline pipe(context(), {Id::rmsnorm, 3, sizeof(params::RmsNormParams), {wg}});
    for (uint32_t hd : {6u, 32u, 128u}) {
      const uint32_t n_head = 4, n_kv_head = 2, n_tokens = 3;
      const uint32_t stride = (n_head + 2 * n_kv_head) * hd + 3;  // q | k | v | slack, per token
      const std::vector<float> rows = random_floats(size_t(n_tokens) * stride, hd, -3, 3);
      const std::vector<float> wq = random_floats(hd, hd + 1, 0.5f, 1.5f), wk = random_floats(hd, hd + 2, 0.5f, 1.5f);
      gpu::Buffer wq_buffer = upload(wq, "q norm"), wk_buffer = upload(wk, "k norm");
      GuardedOutput qkv(rows.size(), rows);
      const float eps = 1e-6f;
      gpu::Recorder rec(context());
      rec.begin();
      rec.dispatch(pipe, {qkv.buffer, wq_buffer, qkv.buffer},
                   params::RmsNormParams{n_tokens * n_head, hd, eps, n_head, stride, 0}, n_tokens * n_head);
      rec.dispatch(pipe, {qkv.buffer, wk_buffer, qkv.buffer},
                   params::RmsNormParams{n_tokens * n_kv_head, hd, eps, n_kv_head, stride, n_head * hd},
                   n_tokens * n_kv_head);
      rec.submit_and_wait();
      std::vector<float> expected = rows;
      for (uint32_t t = 0; t < n_tokens; ++t)
        for (uint32_t h = 0; h < n_head + n_kv_head; ++h) {
          const size_t at = size_t(t) * stride + size_t(h) * hd;
          reference::rmsnorm(std::span(expected).subspan(at, hd), std::span(rows).subspan(at, hd),
                             h < n_head ? wq : wk, eps);
        }
      const std::string what = fmt::format("rmsnorm per head hd {} wg {}", hd, wg);
      check_close(qkv.read(what), expected, kSumOrderBound, what);  // v and the slack are as they were
    }
  }
  check_no_validation_messages();
}

TEST_CASE("swiglu and geglu (fused gate|up rows) and add: elementwise over odd lengths; add of a bias row, in place") {
  for (uint32_t wg : workgroup_sizes()) {
    gpu::Pipeline swiglu(context(), {Id::swiglu, 2, sizeof(params::SwigluParams), {wg}});
    gpu::Pipeline add(context(), {Id::add, 3, sizeof(params::AddParams), {wg}});
    for (uint32_t n : {1u, 5u, 100u, 768u, 4099u}) {
      const uint32_t n_tokens = 3, stride = 2 * n + 1;  // gate | up | one float of slack per row
      const std::vector<float> a = random_floats(n, n, -8, 8), b = random_floats(n, n + 7, -2, 2);
      const std::vector<float> gate_up = random_floats(size_t(n_tokens) * stride, n + 3, -8, 8);
      gpu::Buffer a_buffer = upload(a, "a"), b_buffer = upload(b, "b"), gate_up_buffer = upload(gate_up, "gate|up");
      GuardedOutput swiglu_out(size_t(n_tokens) * n), geglu_out(size_t(n_tokens) * n), add_out(n);
      // A bias row of n added to each of n_tokens rows, in place (qwen2's q|k|v biases).
      const std::vector<float> rows = random_floats(size_t(n_tokens) * n, n + 11, -4, 4);
      GuardedOutput biased(rows.size(), rows);
      gpu::Recorder rec(context());
      rec.begin();
      rec.dispatch(add, {biased.buffer, b_buffer, biased.buffer}, params::AddParams{n_tokens * n, n},
                   gpu::ceil_div(n_tokens * n, wg));
      rec.dispatch(swiglu, {gate_up_buffer, swiglu_out.buffer}, params::SwigluParams{n_tokens, n, stride},
                   gpu::ceil_div(n, wg), n_tokens);
      rec.dispatch(swiglu, {gate_up_buffer, geglu_out.buffer},
                   params::SwigluParams{n_tokens, n, stride, uint32_t(FfnActivation::GeluTanh)}, gpu::ceil_div(n, wg),
                   n_tokens);
      rec.dispatch(add, {a_buffer, b_buffer, add_out.buffer}, params::AddParams{n}, gpu::ceil_div(n, wg));
      rec.submit_and_wait();
      std::vector<float> expected_swiglu(size_t(n_tokens) * n), expected_geglu(size_t(n_tokens) * n), expected_add(n);
      for (uint32_t t = 0; t < n_tokens; ++t) {
        reference::swiglu(std::span(expected_swiglu).subspan(size_t(t) * n, n),
                          std::span(gate_up).subspan(size_t(t) * stride, n),
                          std::span(gate_up).subspan(size_t(t) * stride + n, n));
        reference::geglu(std::span(expected_geglu).subspan(size_t(t) * n, n),
                         std::span(gate_up).subspan(size_t(t) * stride, n),
                         std::span(gate_up).subspan(size_t(t) * stride + n, n));
      }
      for (uint32_t i = 0; i < n; ++i) expected_add[i] = a[i] + b[i];
      const std::string what = fmt::format("n {} wg {}", n, wg);
      check_close(swiglu_out.read("swiglu " + what), expected_swiglu, kTranscendentalBound, "swiglu " + what);
      check_close(geglu_out.read("geglu " + what), expected_geglu, kTranscendentalBound, "geglu " + what);
      check_close(add_out.read("add " + what), expected_add, kExactBound, "add " + what);
      std::vector<float> expected_biased = rows;
      for (size_t i = 0; i < rows.size(); ++i) expected_biased[i] += b[i % n];
      check_close(biased.read("add bias " + what), expected_biased, kExactBound, "add bias " + what);
    }
  }
  check_no_validation_messages();
}

// ---------------------------------------------------------------- [SECTION] matvec, matmul

// y[v][row_offset + r] (+)= W[r] . x[v] on the CPU; y is [n_vec][y_stride].
void matvec_reference(std::vector<float>& y, const TestWeight& w, const std::vector<float>& x, uint32_t n_vec,
                      uint32_t y_stride, uint32_t row_offset, bool accumulate) {
  std::vector<float> row_out(w.rows);
  for (uint32_t v = 0; v < n_vec; ++v) {
    reference::matvec(row_out, w.type, w.gguf.data(), w.rows, w.cols,
                      std::span(x).subspan(v * w.cols, w.cols));
    for (uint64_t r = 0; r < w.rows; ++r) {
      float& dst = y[v * y_stride + row_offset + r];
      dst = accumulate ? dst + row_out[r] : row_out[r];
    }
  }
}

// Runs matvec or matmul over `w` in one or two row chunks and checks y,
// including the untouched slack columns of each y row.
void check_product(gpu::Pipeline& pipe, bool is_matmul, uint32_t groups_per_tile, uint32_t tokens_per_tile,
                   const TestWeight& w, uint32_t n_vec, bool accumulate, bool split,
                   const std::string& what) {
  const uint32_t row_offset = 3, slack = 2;  // y rows hold other data around ours
  const uint32_t y_stride = row_offset + uint32_t(w.rows) + slack;
  const std::vector<float> x = random_floats(n_vec * w.cols, uint32_t(w.rows * 31 + w.cols + n_vec));
  const std::vector<float> y_initial = random_floats(size_t(n_vec) * y_stride, 99);
  gpu::Buffer x_buffer = upload(x, "x");
  GuardedOutput y(size_t(n_vec) * y_stride, y_initial);
  gpu::Recorder rec(context());
  rec.begin();
  for (RowChunk chunk : chunks_of(w, split)) {
    const uint32_t rows = uint32_t(chunk.count), first = uint32_t(chunk.first);
    std::initializer_list<gpu::Binding> bindings{w.value_rows(first, rows), w.scale_rows(first, rows),
                                                 x_buffer, y.buffer};
    if (is_matmul) {
      params::MatMulParams p{rows,     uint32_t(w.cols),   n_vec,
                             y_stride, row_offset + first, accumulate ? 1u : 0u};
      rec.dispatch(pipe, bindings, p, gpu::ceil_div(rows, groups_per_tile),
                   gpu::ceil_div(n_vec, tokens_per_tile));
    } else {
      params::MatVecParams p{rows,     uint32_t(w.cols),   n_vec,
                             y_stride, row_offset + first, accumulate ? 1u : 0u};
      rec.dispatch(pipe, bindings, p, gpu::ceil_div(rows, groups_per_tile), n_vec);
    }
  }
  rec.submit_and_wait();
  std::vector<float> expected = y_initial;
  matvec_reference(expected, w, x, n_vec, y_stride, row_offset, accumulate);
  const std::vector<float> got = y.read(what);
  // The slack around the rows must be bit-for-bit what it was.
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

TEST_CASE("matvec: every weight type, odd shapes, chunked rows, accumulate") {
  for (uint32_t wg : workgroup_sizes()) {
    // 1 and 4: invocations share rows (the GPU path); wg and wg * 4: one and
    // four whole rows per invocation (the CPU-device path, a different code
    // path in the shader; 4 is what the forward pass uses there).
    for (uint32_t rows_per_group : {1u, 4u, wg, wg * KVSCOPE_MATVEC_CPU_ROWS_PER_INVOCATION}) {
      for (GgmlType type : kWeightTypes) {
        gpu::Pipeline pipe(context(),
                           {matvec_id(type), 4, sizeof(params::MatVecParams), {wg, rows_per_group}, kWeightTexels0});
        for (Shape s : matrix_shapes(type, /*include_vocab=*/rows_per_group != 1)) {
          TestWeight w(type, s.rows, s.cols, uint32_t(s.rows * 7 + s.cols));
          for (uint32_t n_vec : {1u, 2u}) {
            const bool accumulate = n_vec == 2, split = n_vec == 2;
            const std::string what = fmt::format("matvec {} {}x{} n_vec {} wg {} rows/group {}{}{}",
                                                 type_name(type), s.rows, s.cols, n_vec, wg, rows_per_group,
                                                 accumulate ? " accumulate" : "", split ? " chunked" : "");
            check_product(pipe, false, rows_per_group, 1, w, n_vec, accumulate, split, what);
          }
        }
      }
    }
  }
  check_no_validation_messages();
}

TEST_CASE("matmul: every weight type, token counts 1..64, chunked rows, accumulate") {
  for (uint32_t wg : workgroup_sizes()) {
    // row_per_invocation 0: shared-memory tiles (GPUs); 1: a row per invocation (CPU devices).
    for (uint32_t row_per_invocation : {0u, 1u}) {
      const uint32_t rows_per_group = row_per_invocation ? wg : KVSCOPE_MATMUL_TILE_ROWS;
      const uint32_t tokens_per_tile = row_per_invocation ? KVSCOPE_MATMUL_CPU_TOKENS : wg / 2;
      for (GgmlType type : kWeightTypes) {
        gpu::Pipeline pipe(context(),
                           {matmul_id(type), 4, sizeof(params::MatMulParams), {wg, row_per_invocation}, kWeightTexels0});
        for (Shape s : matrix_shapes(type, false)) {
          TestWeight w(type, s.rows, s.cols, uint32_t(s.rows * 5 + s.cols));
          for (uint32_t n_tokens : {1u, 3u, 17u, 64u}) {
            const bool accumulate = n_tokens % 2 == 1, split = n_tokens >= 17;
            const std::string what = fmt::format(
                "matmul {} {}x{} tokens {} wg {} row/invocation {}{}{}", type_name(type), s.rows, s.cols,
                n_tokens, wg, row_per_invocation, accumulate ? " accumulate" : "", split ? " chunked" : "");
            check_product(pipe, true, rows_per_group, tokens_per_tile, w, n_tokens, accumulate, split, what);
          }
        }
        // The output projection's shape, once per type: rows far beyond one tile.
        TestWeight vocab(type, 32000, 288, 5);
        check_product(pipe, true, rows_per_group, tokens_per_tile, vocab, 11, false, true,
                      fmt::format("matmul {} 32000x288 tokens 11 wg {} row/invocation {} chunked",
                                  type_name(type), wg, row_per_invocation));
      }
    }
  }
  check_no_validation_messages();
}

// ---------------------------------------------------------------- [SECTION] rope_kv_write, attention

// A KV cache in the shader's format, [n_kv_head][capacity][head_dim].
struct CacheImage {
  bool f16;
  std::vector<uint32_t> words;  // what the GPU buffer holds
  CacheImage(bool f16, size_t elements, std::span<const float> values) : f16(f16) {
    if (!f16) {
      words.resize(elements);
      if (elements) std::memcpy(words.data(), values.data(), elements * 4);  // memcpy of an empty span is UB
    } else {
      words.resize(elements / 2);
      for (size_t i = 0; i < elements; i += 2) {
        words[i / 2] = uint32_t(f32_to_f16(values[i])) | (uint32_t(f32_to_f16(values[i + 1])) << 16);
      }
    }
  }
  float at(size_t e) const {
    if (!f16) return std::bit_cast<float>(words[e]);
    return f16_to_f32(uint16_t(words[e / 2] >> (16 * (e % 2))));
  }
};

std::vector<float> cache_values(const CacheImage& cache, size_t elements) {
  std::vector<float> v(elements);
  for (size_t e = 0; e < elements; ++e) v[e] = cache.at(e);
  return v;
}

// The cache layout of f32 or f16 keys and values (rows of head_dim elements);
// the quantized formats are tested in test_kv_formats.cpp.
params::KvLayout plain_kv_layout(bool f16, uint32_t head_dim) {
  const uint32_t row = f16 ? head_dim / 2 : head_dim;
  return {head_dim, row, row, row, row, 1, 0, 0, 0, 0, 0};
}

// The fused q|k|v rows of n_tokens tokens, in the forward pass's layout.
struct QkvCase {
  uint32_t head_dim, rope_dim, n_head, n_kv_head;
  RopeMode mode = RopeMode::Normal;  // Neox: pairs (i, i + rope_dim/2), qwen2
  bool freq_factors = false;         // per-pair frequency divisors, Llama 3's rope_freqs
};

TEST_CASE("rope_kv_write: q rotated in place, k rotated and v stored; f32/f16, GQA, skipped slots, NeoX, factors") {
  for (uint32_t wg : workgroup_sizes()) {
    for (bool f16 : {false, true}) {
      gpu::Pipeline pipe(context(), {f16 ? Id::rope_kv_write_f16_f16 : Id::rope_kv_write_f32_f32, 6,
                                     sizeof(params::RopeKvWriteParams), {wg}});
      for (QkvCase c : {QkvCase{48, 48, 6, 3}, QkvCase{64, 64, 8, 2}, QkvCase{128, 128, 3, 3}, QkvCase{64, 32, 3, 1},
                        QkvCase{64, 64, 8, 2, RopeMode::Neox}, QkvCase{48, 48, 6, 3, RopeMode::Neox, true},
                        QkvCase{64, 32, 3, 1, RopeMode::Neox, true}, QkvCase{128, 128, 4, 1, RopeMode::Normal, true}}) {
        const uint32_t n_tokens = 5, capacity = 13, hd = c.head_dim;
        const uint32_t q_dim = c.n_head * hd, kv_dim = c.n_kv_head * hd;
        const uint32_t stride = q_dim + 2 * kv_dim + 3;  // 3 floats of slack per row must stay untouched
        const std::vector<int32_t> positions{0, 300, 17, 5, 123};
        // Slot per (token, kv head): a different scatter per head; -1 and >= capacity: not stored.
        std::vector<int32_t> slots(n_tokens * c.n_kv_head);
        for (uint32_t i = 0; i < slots.size(); ++i) slots[i] = i % 4 == 1 ? -1 : int32_t((i * 7 + 2) % capacity);
        slots[slots.size() - 1] = int32_t(capacity);
        const std::vector<float> qkv = random_floats(size_t(n_tokens) * stride, 3);
        const size_t cache_elems = size_t(c.n_kv_head) * capacity * hd;
        const CacheImage k_before(f16, cache_elems, random_floats(cache_elems, 5)),
            v_before(f16, cache_elems, random_floats(cache_elems, 6));
        auto as_floats = [](const std::vector<uint32_t>& words) {
          std::vector<float> f(words.size());
          std::memcpy(f.data(), words.data(), words.size() * 4);
          return f;
        };
        GuardedOutput qkv_out(qkv.size(), qkv), k_cache(k_before.words.size(), as_floats(k_before.words)),
            v_cache(v_before.words.size(), as_floats(v_before.words));
        gpu::Buffer pos_buffer = upload(positions, "positions"), slot_buffer = upload(slots, "slots");
        const float theta = 10000.0f;
        // Divisors in [1, 8], like Llama 3's (1 for high frequencies, up to its scale factor 8 for low).
        std::vector<float> factors;
        if (c.freq_factors)
          for (float r : random_floats(c.rope_dim / 2, 9)) factors.push_back(4.5f + 3.5f * r);
        gpu::Buffer factor_buffer = upload(factors.empty() ? std::vector<float>{0.0f} : factors, "freq factors");
        params::RopeKvWriteParams p{n_tokens, c.n_head, c.n_kv_head, hd, c.rope_dim, theta, capacity, stride,
                                    plain_kv_layout(f16, hd)};
        p.rope_mode = uint32_t(c.mode);
        p.has_freq_factors = c.freq_factors ? 1u : 0u;
        gpu::Recorder rec(context());
        rec.begin();
        rec.dispatch(pipe, {qkv_out.buffer, pos_buffer, slot_buffer, k_cache.buffer, v_cache.buffer, factor_buffer}, p,
                     c.n_head + c.n_kv_head, n_tokens);
        rec.submit_and_wait();

        // Expected: q heads rotated in place (the rest of the row as it was);
        // the old cache with each stored token's rotated k and its v at its slot.
        std::vector<float> qkv_expected = qkv;
        std::vector<float> k_expected = cache_values(k_before, cache_elems);
        std::vector<float> v_expected = cache_values(v_before, cache_elems);
        std::vector<bool> written(size_t(c.n_kv_head) * capacity, false);
        for (uint32_t t = 0; t < n_tokens; ++t) {
          for (uint32_t h = 0; h < c.n_head; ++h)
            reference::rope(std::span(qkv_expected).subspan(size_t(t) * stride + h * hd, hd), positions[t],
                            c.rope_dim, theta, c.mode, factors);
          for (uint32_t h = 0; h < c.n_kv_head; ++h) {
            const int32_t slot = slots[t * c.n_kv_head + h];
            if (slot < 0 || uint32_t(slot) >= capacity) continue;
            written[h * capacity + slot] = true;
            std::vector<float> k(qkv.begin() + t * stride + q_dim + h * hd,
                                 qkv.begin() + t * stride + q_dim + (h + 1) * hd);
            reference::rope(k, positions[t], c.rope_dim, theta, c.mode, factors);
            for (uint32_t d = 0; d < hd; ++d) {
              const float v = qkv[size_t(t) * stride + q_dim + kv_dim + h * hd + d];
              const size_t dst = (size_t(h) * capacity + slot) * hd + d;
              k_expected[dst] = f16 ? f16_round(k[d]) : k[d];
              v_expected[dst] = f16 ? f16_round(v) : v;
            }
          }
        }
        const std::string what = fmt::format("rope_kv_write {} head_dim {} rope_dim {} heads {}/{} {}{} wg {}",
                                             f16 ? "f16" : "f32", hd, c.rope_dim, c.n_head, c.n_kv_head,
                                             c.mode == RopeMode::Neox ? "neox" : "normal",
                                             c.freq_factors ? " factors" : "", wg);
        const std::vector<float> qkv_got = qkv_out.read(what + " qkv");
        // Everything but the q heads (k, v, slack) is bit-for-bit unchanged.
        for (uint32_t t = 0; t < n_tokens; ++t)
          for (uint32_t e = q_dim; e < stride; ++e)
            if (std::memcmp(&qkv_got[size_t(t) * stride + e], &qkv[size_t(t) * stride + e], 4) != 0) {
              FAIL_CHECK(fmt::format("{}: qkv[{}][{}] outside the q heads changed", what, t, e));
              break;
            }
        check_close(qkv_got, qkv_expected, kTranscendentalBound, what + " q");
        auto got_cache = [&](const GuardedOutput& out, const std::string& name) {
          const std::vector<float> w = out.read(what + name);
          CacheImage image(f16, 0, {});
          image.words.resize(w.size());
          std::memcpy(image.words.data(), w.data(), w.size() * 4);
          return image;
        };
        const CacheImage k_after = got_cache(k_cache, " k"), v_after = got_cache(v_cache, " v");
        // Slots nobody wrote keep their exact words.
        const size_t words_per_slot = f16 ? hd / 2 : hd;
        for (size_t slot = 0; slot < written.size(); ++slot) {
          if (written[slot]) continue;
          const size_t w0 = slot * words_per_slot;
          const bool same = std::equal(k_after.words.begin() + w0, k_after.words.begin() + w0 + words_per_slot,
                                       k_before.words.begin() + w0) &&
                            std::equal(v_after.words.begin() + w0, v_after.words.begin() + w0 + words_per_slot,
                                       v_before.words.begin() + w0);
          CHECK_MESSAGE(same, fmt::format("{}: slot {} of head {} was not written but changed", what,
                                          slot % capacity, slot / capacity));
        }
        // Rotated keys: transcendental error, plus one f16 ulp when stored as f16.
        check_close(cache_values(k_after, cache_elems), k_expected, kTranscendentalBound + (f16 ? kF16StoreBound : 0),
                    what + " k");
        check_close(cache_values(v_after, cache_elems), v_expected, f16 ? kF16StoreBound : kExactBound, what + " v");
      }
    }
  }
  check_no_validation_messages();
}

struct AttentionCase {
  uint32_t head_dim, n_head, n_kv_head, n_tokens, capacity, n_slots;
  uint32_t window = 0;    // sliding window (gemma3's local layers), 0: none
  uint32_t kv_slots = 0;  // slots of the K/V caches per kv head, 0: capacity
  float scale = 0.0f;     // query scale, 0: 1/sqrt(head_dim)
};

// One attention case: a cache whose slots hold positions in scrambled order,
// some empty (their contents NaN, which must never reach the output), some
// holding positions later than a query (masked), and slots >= n_slots NaN too.
void check_attention(gpu::Pipeline& pipe, bool f16, const AttentionCase& c, const std::string& what) {
  const uint32_t hd = c.head_dim;
  const uint32_t kv_slots = c.kv_slots ? c.kv_slots : c.capacity;  // K/V rows per kv head
  const float scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(float(hd));
  std::mt19937 rng(c.capacity * 131 + c.head_dim + c.n_tokens);
  // Query positions: the last n_tokens of a sequence, causal.
  const int32_t last_pos = int32_t(c.n_slots) - 1 + 2;
  std::vector<int32_t> query_pos(c.n_tokens);
  for (uint32_t t = 0; t < c.n_tokens; ++t) query_pos[t] = last_pos - int32_t(c.n_tokens - 1 - t);
  // Slot positions per kv head: a shuffled permutation of 0..n_slots+1, every
  // 7th slot empty.
  std::vector<int32_t> slot_pos(size_t(c.n_kv_head) * c.capacity, -1);
  for (uint32_t h = 0; h < c.n_kv_head; ++h) {
    std::vector<int32_t> pos(c.n_slots);
    std::iota(pos.begin(), pos.end(), 2);  // shifted so that the last ones exceed early queries
    std::shuffle(pos.begin(), pos.end(), rng);
    for (uint32_t s = 0; s < c.n_slots; ++s) slot_pos[h * c.capacity + s] = (s % 7 == 3) ? -1 : pos[s];
  }
  const size_t cache_elems = size_t(c.n_kv_head) * kv_slots * hd;
  std::vector<float> k = random_floats(cache_elems, 21, -2, 2), v = random_floats(cache_elems, 22);
  for (uint32_t h = 0; h < c.n_kv_head; ++h) {
    for (uint32_t s = 0; s < kv_slots; ++s) {
      if (s < c.n_slots && slot_pos[h * c.capacity + s] >= 0) continue;
      for (uint32_t d = 0; d < hd; ++d)
        k[(h * kv_slots + s) * hd + d] = v[(h * kv_slots + s) * hd + d] = NAN;
    }
  }
  const CacheImage k_cache(f16, cache_elems, k), v_cache(f16, cache_elems, v);
  const std::vector<float> q = random_floats(size_t(c.n_tokens) * c.n_head * hd, 23, -2, 2);
  // q as the forward pass passes it: the first n_head * head_dim floats of each token's q|k|v row.
  const uint32_t q_stride = (c.n_head + 2 * c.n_kv_head) * hd;
  std::vector<float> qkv(size_t(c.n_tokens) * q_stride, NAN);
  for (uint32_t t = 0; t < c.n_tokens; ++t)
    std::copy_n(q.begin() + size_t(t) * c.n_head * hd, c.n_head * hd, qkv.begin() + size_t(t) * q_stride);
  gpu::Buffer q_buffer = upload(qkv, "qkv"), k_buffer = upload(k_cache.words, "k cache"),
              v_buffer = upload(v_cache.words, "v cache"), slot_buffer = upload(slot_pos, "slot positions"),
              qpos_buffer = upload(query_pos, "query positions");
  GuardedOutput out(q.size()), probs(size_t(c.n_tokens) * c.n_head * c.capacity);
  params::AttentionParams p{c.n_tokens, c.n_head, c.n_kv_head, hd, c.capacity, c.n_slots,
                            scale,       q_stride, plain_kv_layout(f16, hd)};
  p.window = c.window;
  p.kv_slots = c.kv_slots;
  const std::vector<int32_t> no_open_blocks(c.n_kv_head, -1);
  gpu::Buffer open_buffer = upload(no_open_blocks, "open blocks");
  gpu::Recorder rec(context());
  rec.begin();
  // bindings 8, 9 (rolling only) and 10 (kivi2 only) are not read
  rec.dispatch(pipe,
               {q_buffer, k_buffer, v_buffer, slot_buffer, qpos_buffer, out.buffer, probs.buffer, open_buffer,
                slot_buffer, slot_buffer, slot_buffer},
               p, c.n_head, c.n_tokens);
  rec.submit_and_wait();

  // CPU: per (token, head), gather the visible slots' rows and run the reference.
  std::vector<float> out_expected(q.size()), probs_expected(probs.n, 0.0f);
  const uint32_t group = c.n_head / c.n_kv_head;
  for (uint32_t t = 0; t < c.n_tokens; ++t) {
    for (uint32_t h = 0; h < c.n_head; ++h) {
      const uint32_t kvh = h / group;
      std::vector<uint32_t> visible;
      std::vector<float> keys, values;
      for (uint32_t s = 0; s < c.n_slots; ++s) {
        const int32_t sp = slot_pos[kvh * c.capacity + s];
        if (sp < 0 || sp > query_pos[t]) continue;
        if (c.window > 0 && query_pos[t] - sp >= int32_t(c.window)) continue;  // behind the sliding window
        visible.push_back(s);
        for (uint32_t d = 0; d < hd; ++d) {
          keys.push_back(k_cache.at((size_t(kvh) * kv_slots + s) * hd + d));
          values.push_back(v_cache.at((size_t(kvh) * kv_slots + s) * hd + d));
        }
      }
      const size_t q_base = (size_t(t) * c.n_head + h) * hd;
      std::vector<float> row_probs(visible.size());
      auto out_row = std::span(out_expected).subspan(q_base, hd);
      if (visible.empty()) {
        std::fill(out_row.begin(), out_row.end(), 0.0f);
        continue;
      }
      reference::attention_head(out_row, std::span(q).subspan(q_base, hd), keys, values,
                                uint32_t(visible.size()), hd, row_probs, scale);
      for (size_t i = 0; i < visible.size(); ++i)
        probs_expected[(size_t(t) * c.n_head + h) * c.capacity + visible[i]] = row_probs[i];
    }
  }
  check_close(out.read(what + " out"), out_expected, kTranscendentalBound, what + " out");
  check_close(probs.read(what + " probs"), probs_expected, kTranscendentalBound, what + " probs");
}

TEST_CASE("attention: f32/f16 caches, GQA, causal masks, empty slots, capacities 1..300, sliding windows") {
  const AttentionCase cases[] = {
      // head_dim, n_head, n_kv_head, n_tokens, capacity, n_slots[, window, kv_slots, scale]
      {48, 6, 6, 1, 1, 1},     {48, 6, 6, 1, 50, 37},  {48, 6, 6, 7, 300, 300},  {64, 8, 2, 1, 100, 100},
      {64, 8, 2, 7, 129, 120}, {128, 4, 1, 7, 17, 17}, {128, 8, 2, 1, 300, 255}, {64, 6, 6, 7, 5, 5},
      // gemma3's local layers: a window, K/V caches narrower than the probs rows, the file's query scale
      {64, 8, 2, 7, 129, 40, 16, 48, 0.0625f}, {256, 4, 1, 1, 300, 30, 25, 30}, {32, 4, 2, 7, 64, 64, 1},
  };
  // 256 and 1024: the sizes a GPU's attention gets (the values pass splits
  // the slots into slices there; models/forward.cpp attention_workgroup_size).
  std::vector<uint32_t> sizes = workgroup_sizes();
  for (uint32_t gpu_size : {256u, 1024u})
    if (gpu_size <= context().info().max_workgroup_size_x) sizes.push_back(gpu_size);
  for (uint32_t wg : sizes) {
    for (bool f16 : {false, true}) {
      gpu::Pipeline pipe(
          context(), {f16 ? Id::attention_f16_f16 : Id::attention_f32_f32, 11, sizeof(params::AttentionParams), {wg}});
      for (const AttentionCase& c : cases) {
        check_attention(
            pipe, f16, c,
            fmt::format("attention {} head_dim {} heads {}/{} tokens {} capacity {} slots {} wg {}",
                        f16 ? "f16" : "f32", c.head_dim, c.n_head, c.n_kv_head, c.n_tokens, c.capacity,
                        c.n_slots, wg));
      }
    }
  }
  check_no_validation_messages();
}

}  // namespace
