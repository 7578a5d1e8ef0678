#pragma once
// What the GPU op tests share: one validated Vulkan context for the whole
// test_gpu executable, uploads and downloads, outputs fenced by sentinel
// words, the normalized-error check, and weight matrices in every GGUF type
// as the GPU reads them. Used by test_ops, test_kquant, test_kv_formats,
// test_rolling and test_attention_scores.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "models/ggml_types.h"
#include "models/gpu_layout.h"
#include "models/weight_shaders.h"
#include "tests/cleanup.h"

namespace kvscope::test {

using shaders::Id;

constexpr size_t kGuardFloats = 64;
constexpr uint32_t kSentinelBits = 0x7fc0beefu;  // a NaN no shader produces

// Weight values are bound as texel buffers (params.h): binding 0 of
// matvec/matmul, binding 1 of embed.
constexpr uint32_t kWeightTexels0 = 1u << 0, kWeightTexels1 = 1u << 1;

// One Vulkan context for the whole test program, validation on; released
// after the last test case (tests/cleanup.h).
inline gpu::Context& context() {
  static std::unique_ptr<gpu::Context> ctx;
  if (!ctx) {
    setenv("KVSCOPE_VALIDATION", "1", /*overwrite=*/0);
    gpu::ContextOptions options;
    options.validation = true;
    ctx = std::make_unique<gpu::Context>(options);
    release_after_tests([] { ctx.reset(); });
  }
  return *ctx;
}

// The workgroup size the forward pass picks (the subgroup size, at least 8).
inline uint32_t workgroup_size() { return std::max(8u, context().subgroup_size()); }

// Workgroup sizes each op is run with: the forward pass's and 64, so
// reductions see more than one width.
inline std::vector<uint32_t> workgroup_sizes() {
  std::vector<uint32_t> sizes{workgroup_size()};
  if (sizes[0] != 64) sizes.push_back(64);
  return sizes;
}

inline void check_no_validation_messages() {
  if (!context().validation_enabled())
    MESSAGE("VK_LAYER_KHRONOS_validation is not installed: API misuse goes unchecked");
  CHECK(context().validation_messages() == 0);
}

inline std::string type_name(GgmlType t) { return std::string(type_traits(static_cast<uint32_t>(t))->name); }

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

template <class T>
gpu::Buffer upload(std::span<const T> data, const char* label, gpu::MemoryUse use = gpu::MemoryUse::Device) {
  const uint64_t bytes = std::max<uint64_t>(data.size_bytes(), 16);  // never a 0-byte buffer
  gpu::Buffer buffer(context(), bytes, use, label);
  if (!data.empty()) buffer.write_as<T>(data);
  return buffer;
}
template <class T>
gpu::Buffer upload(const std::vector<T>& data, const char* label, gpu::MemoryUse use = gpu::MemoryUse::Device) {
  return upload(std::span<const T>(data), label, use);
}

template <class T>
std::vector<T> download(const gpu::Buffer& buffer, size_t n) {
  std::vector<T> v(n);
  buffer.read_as<T>(v);
  return v;
}

// An f32 buffer of n values (initialised from `initial`, or to sentinels)
// followed by kGuardFloats sentinels that the shader must not touch.
struct GuardedOutput {
  size_t n;
  gpu::Buffer buffer;
  explicit GuardedOutput(size_t n, std::span<const float> initial = {})
      : n(n), buffer(context(), (n + kGuardFloats) * 4, gpu::MemoryUse::Device, "guarded output") {
    std::vector<uint32_t> words(n + kGuardFloats, kSentinelBits);
    if (!initial.empty()) std::memcpy(words.data(), initial.data(), n * 4);
    buffer.write_as<uint32_t>(words);
  }
  // The n values; fails the check when a guard word changed.
  std::vector<float> read(const std::string& what) const {
    std::vector<uint32_t> words(n + kGuardFloats);
    buffer.read_as<uint32_t>(words);
    for (size_t i = n; i < words.size(); ++i) {
      if (words[i] != kSentinelBits) {
        FAIL_CHECK(fmt::format("{}: guard word {} after the {} outputs was overwritten", what, i - n, n));
        break;
      }
    }
    std::vector<float> values(n);
    std::memcpy(values.data(), words.data(), n * 4);
    return values;
  }
};

// NaN/inf first, then the normalized MSE against `bound`, naming the worst
// index. `Cpu` is float or double (a reference summed in f64).
template <class Cpu>
void check_close(std::span<const float> gpu, std::span<const Cpu> cpu, double bound, const std::string& what) {
  REQUIRE(gpu.size() == cpu.size());
  for (size_t i = 0; i < gpu.size(); ++i) {
    if (!std::isfinite(gpu[i]) && std::isfinite(cpu[i])) {
      FAIL_CHECK(fmt::format("{}: non-finite {} at index {} (cpu {})", what, gpu[i], i, cpu[i]));
      return;
    }
  }
  double err = 0, norm = 0, worst_err = -1;
  size_t worst = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double d = double(gpu[i]) - double(cpu[i]);
    err += d * d;
    norm += double(cpu[i]) * double(cpu[i]);
    if (d * d > worst_err) worst_err = d * d, worst = i;
  }
  const double nmse = norm > 0 ? err / norm : err;
  CHECK_MESSAGE(nmse <= bound, fmt::format("{}: normalized MSE {:.3g} > {:.3g}; worst index {}: gpu {} cpu {}", what,
                                           nmse, bound, worst, gpu[worst], cpu[worst]));
}
inline void check_close(std::span<const float> gpu, std::span<const float> cpu, double bound, const std::string& what) {
  check_close<float>(gpu, cpu, bound, what);
}
inline void check_close(std::span<const float> gpu, std::span<const double> cpu, double bound,
                        const std::string& what) {
  check_close<double>(gpu, cpu, bound, what);
}

// The embed / matvec / matmul shader of each weight type: the forward
// pass's table (models/weight_shaders.h).
inline Id embed_id(GgmlType t) { return weight_shaders(t).embed; }
inline Id matvec_id(GgmlType t) { return weight_shaders(t).matvec; }
inline Id matmul_id(GgmlType t) { return weight_shaders(t).matmul; }

// A rows x cols matrix as GGUF stores it (`gguf`: quantized from random
// floats, or given), its values as the CPU dequantizes them, and its GPU
// image.
struct TestWeight {
  GgmlType type;
  uint64_t rows, cols;
  std::vector<uint8_t> gguf;
  std::vector<float> values;  // dequantized, rows x cols
  GpuWeight gpu;
  gpu::Buffer value_buffer, scale_buffer;

  TestWeight(GgmlType type, uint64_t rows, uint64_t cols, uint32_t seed) : TestWeight(type, rows, cols, std::vector<uint8_t>{}) {
    const std::vector<float> f = random_floats(rows * cols, seed);
    const size_t bytes_per_row = row_bytes(type, cols);
    std::vector<uint8_t> bytes(rows * bytes_per_row);
    if (type_writable(type)) {
      for (uint64_t r = 0; r < rows; ++r)
        quantize_row(type, std::span(f).subspan(r * cols, cols), std::span(bytes).subspan(r * bytes_per_row, bytes_per_row));
    } else {
      // A type kvscope only reads (IQ4_NL, IQ4_XS, Q2_K, Q3_K): random bytes,
      // then each block's f16 scales (d, and Q2_K's dmin) set to small values
      // drawn from the same floats, so no scale is a NaN or an infinity.
      const size_t block_bytes = type_traits(static_cast<uint32_t>(type))->block_bytes;
      const std::vector<size_t> scale_offsets = type == GgmlType::Q2_K   ? std::vector<size_t>{80, 82}
                                                : type == GgmlType::Q3_K ? std::vector<size_t>{108}
                                                                         : std::vector<size_t>{0};
      uint32_t state = seed * 2654435761u + 1u;
      for (size_t b = 0; b < bytes.size() / block_bytes; ++b) {
        for (size_t i = 0; i < block_bytes; ++i) {
          state = state * 1664525u + 1013904223u;
          bytes[b * block_bytes + i] = static_cast<uint8_t>(state >> 24);
        }
        for (size_t o : scale_offsets) {
          const uint16_t d = f32_to_f16(0.0005f + 0.002f * std::abs(f[(b + o) % f.size()]));
          std::memcpy(&bytes[b * block_bytes + o], &d, 2);
        }
      }
    }
    set(std::move(bytes));
  }
  TestWeight(GgmlType type, uint64_t rows, uint64_t cols, std::vector<uint8_t> bytes)
      : type(type), rows(rows), cols(cols) {
    if (!bytes.empty()) set(std::move(bytes));
  }

  // Bindings of rows [first, first + count) (offsets must be aligned).
  gpu::Binding value_rows(uint64_t first, uint64_t count) const {
    return {value_buffer, first * gpu.value_row_bytes(), count * gpu.value_row_bytes()};
  }
  gpu::Binding scale_rows(uint64_t first, uint64_t count) const {
    if (gpu.scale_row_bytes() == 0) return {scale_buffer};
    return {scale_buffer, first * gpu.scale_row_bytes(), count * gpu.scale_row_bytes()};
  }
  // A row where a second chunk can start with its value offset aligned to
  // minTexelBufferOffsetAlignment and its scale offset to
  // minStorageBufferOffsetAlignment, near the middle; 0 when there is none.
  uint64_t chunk_split_row() const {
    const uint64_t value_align = std::max<uint64_t>(1, context().properties().limits.minTexelBufferOffsetAlignment);
    const uint64_t scale_align = std::max<uint64_t>(1, context().info().min_storage_buffer_offset_alignment);
    uint64_t step = 1;
    while ((step * gpu.value_row_bytes()) % value_align != 0 || (step * gpu.scale_row_bytes()) % scale_align != 0)
      ++step;
    const uint64_t split = std::max<uint64_t>(step, rows / 2 / step * step);
    return split < rows ? split : 0;
  }

 private:
  void set(std::vector<uint8_t> bytes) {
    gguf = std::move(bytes);
    const size_t bytes_per_row = row_bytes(type, cols);
    values.resize(rows * cols);
    for (uint64_t r = 0; r < rows; ++r)
      dequantize_row(type, std::span<const uint8_t>(gguf).subspan(r * bytes_per_row, bytes_per_row),
                     std::span(values).subspan(r * cols, cols));
    gpu = repack_for_gpu(type, gguf.data(), rows, cols);
    value_buffer = upload(gpu.values, "weight values");
    scale_buffer = upload(gpu.scales, "weight scales");  // 16 bytes of zeros when unused: bound, not read
  }
};

// The rows of a weight that one dispatch sees.
struct RowChunk {
  uint64_t first, count;
};
inline std::vector<RowChunk> chunks_of(const TestWeight& w, bool split) {
  const uint64_t at = split ? w.chunk_split_row() : 0;
  if (at == 0) return {{0, w.rows}};
  return {{0, at}, {at, w.rows - at}};
}

}  // namespace kvscope::test
