// The quantized KV cache on the GPU against its CPU reference (kv/formats.h):
// rope_kv_write must leave exactly the words kv::encode_row writes (the
// rounding is specified, so codes, scales and minimums match bit for bit),
// kivi_key_write exactly the words kv::TensorImage writes through a slot
// table's blocks, and attention over a quantized cache must match the CPU's
// attention over the CPU-dequantized cache to f32 summation order — for every
// (key format, value format) pair, head_dim 48/64/128 and groups that do not
// divide 32.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "gpu/recorder.h"
#include "kv/cache.h"
#include "kv/formats.h"
#include "kv/hadamard.h"
#include "models/reference.h"
#include "shaders/common/params.h"
#include "tests/gpu/gpu_fixture.h"

using namespace kvscope;
using kv::Encoding;
using kv::Format;
using shaders::Id;
using namespace kvscope::test;

namespace {

constexpr Format kFormats[] = {Format::F32, Format::F16, Format::Q8, Format::Q4, Format::Kivi2};

Id rope_kv_write_id(Format k, Format v) {
  static constexpr Id ids[5][5] = {
      {Id::rope_kv_write_f32_f32, Id::rope_kv_write_f32_f16, Id::rope_kv_write_f32_q8, Id::rope_kv_write_f32_q4, Id::rope_kv_write_f32_kivi2},
      {Id::rope_kv_write_f16_f32, Id::rope_kv_write_f16_f16, Id::rope_kv_write_f16_q8, Id::rope_kv_write_f16_q4, Id::rope_kv_write_f16_kivi2},
      {Id::rope_kv_write_q8_f32, Id::rope_kv_write_q8_f16, Id::rope_kv_write_q8_q8, Id::rope_kv_write_q8_q4, Id::rope_kv_write_q8_kivi2},
      {Id::rope_kv_write_q4_f32, Id::rope_kv_write_q4_f16, Id::rope_kv_write_q4_q8, Id::rope_kv_write_q4_q4, Id::rope_kv_write_q4_kivi2},
      {Id::rope_kv_write_kivi2_f32, Id::rope_kv_write_kivi2_f16, Id::rope_kv_write_kivi2_q8, Id::rope_kv_write_kivi2_q4, Id::rope_kv_write_kivi2_kivi2}};
  return ids[int(k)][int(v)];
}
Id attention_id(Format k, Format v) {
  static constexpr Id ids[5][5] = {
      {Id::attention_f32_f32, Id::attention_f32_f16, Id::attention_f32_q8, Id::attention_f32_q4, Id::attention_f32_kivi2},
      {Id::attention_f16_f32, Id::attention_f16_f16, Id::attention_f16_q8, Id::attention_f16_q4, Id::attention_f16_kivi2},
      {Id::attention_q8_f32, Id::attention_q8_f16, Id::attention_q8_q8, Id::attention_q8_q4, Id::attention_q8_kivi2},
      {Id::attention_q4_f32, Id::attention_q4_f16, Id::attention_q4_q8, Id::attention_q4_q4, Id::attention_q4_kivi2},
      {Id::attention_kivi2_f32, Id::attention_kivi2_f16, Id::attention_kivi2_q8, Id::attention_kivi2_q4, Id::attention_kivi2_kivi2}};
  return ids[int(k)][int(v)];
}

params::KvLayout kv_layout(const kv::TensorLayout& K, const kv::TensorLayout& V, uint32_t group) {
  const bool v_window = V.encoding == Encoding::Q2;
  return {group, K.row_words, K.code_words, V.row_words, V.code_words, K.token_group, K.n_blocks, K.params_offset,
          K.recent_offset, v_window ? V.recent_rows : 0u, v_window ? V.recent_offset : 0u};
}

// Values as a model's keys and values look: mostly small, a few large
// channels, rounded to f16 (so the f16 window and f16 cache store them
// exactly on any device, whatever its packHalf2x16 rounding).
std::vector<float> kv_values(size_t n, uint32_t head_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t d = i % head_dim;
    const float spread = d == 3 ? 12.0f : d == head_dim - 5 ? 6.0f : 1.0f;
    v[i] = kv::f32_from_f16(kv::f16_from_f32(normal(rng) * spread + (d == 7 ? 4.0f : 0.0f)));
  }
  return v;
}

// Element-wise comparison of words, naming the first difference.
void check_words(const std::vector<uint32_t>& gpu, const std::vector<uint32_t>& cpu, size_t first, size_t n,
                 const std::string& what) {
  for (size_t i = first; i < first + n; ++i) {
    if (gpu[i] != cpu[i]) {
      FAIL_CHECK(fmt::format("{}: word {} is {:#010x} on the GPU, {:#010x} on the CPU", what, i, gpu[i], cpu[i]));
      return;
    }
  }
}

struct Shape {
  uint32_t head_dim, group;
};
constexpr Shape kShapes[] = {{48, 16}, {48, 12}, {48, 24}, {48, 48}, {64, 32}, {64, 8}, {128, 32}};

}  // namespace

TEST_CASE("rope_kv_write: every key x value format encodes bit for bit like kv::encode_row") {
  const uint32_t wg = workgroup_size(), n_head = 3, n_kv_head = 2, n_tokens = 6, capacity = 11;
  for (Format kf : kFormats) {
    for (Format vf : kFormats) {
      gpu::Pipeline pipe(context(), {rope_kv_write_id(kf, vf), 6, sizeof(params::RopeKvWriteParams), {wg}});
      for (const Shape& s : kShapes) {
        const uint32_t hd = s.head_dim, q_dim = n_head * hd, kv_dim = n_kv_head * hd;
        const uint32_t stride = q_dim + 2 * kv_dim;
        const kv::TensorLayout K = kv::tensor_layout(kv::encoding(kf, kv::Role::Keys), n_kv_head, capacity, hd,
                                                     s.group, 4);
        const kv::TensorLayout V = kv::tensor_layout(kv::encoding(vf, kv::Role::Values), n_kv_head, capacity, hd,
                                                     s.group, 4);
        std::vector<float> qkv = kv_values(size_t(n_tokens) * stride, hd, hd + s.group);
        // Token 0, head 0: exact ties of its own scale in the first group.
        {
          kv::TensorLayout L = kv::tensor_layout(Encoding::Q8, 1, 1, hd, s.group, 0);
          std::vector<uint32_t> row(L.row_words);
          float* k0 = &qkv[q_dim];
          std::fill(k0, k0 + hd, 0.0f);
          k0[0] = 31.75f;
          kv::encode_row(L, std::span<const float>(k0, hd), row);
          const float scale = kv::f32_from_f16(uint16_t(row[L.code_words]));
          for (uint32_t i = 1; i < s.group; ++i) k0[i] = (float(i % 9) - 4.5f) * scale;
        }
        const std::vector<int32_t> positions{0, 1, 2, 3, 4, 5};
        std::vector<int32_t> slots(size_t(n_tokens) * n_kv_head);
        for (uint32_t i = 0; i < slots.size(); ++i) slots[i] = i == 3 ? -1 : int32_t((i * 5 + 1) % capacity);
        gpu::Buffer qkv_buffer = upload(qkv, "qkv"), pos_buffer = upload(positions, "positions"),
                    slot_buffer = upload(slots, "slots");
        gpu::Buffer k_cache = upload(std::vector<uint32_t>(K.total_words, 0u), "k cache");
        gpu::Buffer v_cache = upload(std::vector<uint32_t>(V.total_words, 0u), "v cache");
        // rope_dim 0: k reaches the cache unrotated, so the CPU can encode the very same floats.
        const params::RopeKvWriteParams p{n_tokens, n_head, n_kv_head, hd, 0, 10000.0f, capacity, stride,
                                          kv_layout(K, V, s.group)};
        gpu::Recorder rec(context());
        rec.begin();
        // binding 5 (frequency factors) is not read: has_freq_factors is 0
        rec.dispatch(pipe, {qkv_buffer, pos_buffer, slot_buffer, k_cache, v_cache, pos_buffer}, p, n_head + n_kv_head,
                     n_tokens);
        rec.submit_and_wait();

        kv::TensorImage k_expected(K), v_expected(V);
        for (uint32_t t = 0; t < n_tokens; ++t)
          for (uint32_t h = 0; h < n_kv_head; ++h) {
            const int32_t slot = slots[t * n_kv_head + h];
            if (kf != Format::Kivi2)
              k_expected.write(h, std::span(&slot, 1), std::span(qkv).subspan(t * stride + q_dim + h * hd, hd));
            v_expected.write(h, std::span(&slot, 1), std::span(qkv).subspan(t * stride + q_dim + kv_dim + h * hd, hd));
          }
        const std::string what = fmt::format("rope_kv_write k={} v={} head_dim {} group {}", kv::format_name(kf),
                                             kv::format_name(vf), hd, s.group);
        const auto k_got = download<uint32_t>(k_cache, K.total_words);
        const auto v_got = download<uint32_t>(v_cache, V.total_words);
        for (uint32_t t = 0; t < n_tokens; ++t)
          for (uint32_t h = 0; h < n_kv_head; ++h) {
            const int32_t slot = slots[t * n_kv_head + h];
            if (slot < 0) continue;
            if (kf != Format::Kivi2)
              check_words(k_got, std::vector<uint32_t>(k_expected.words().begin(), k_expected.words().end()),
                          K.row_offset(h, slot), K.row_words, what + " keys");
            check_words(v_got, std::vector<uint32_t>(v_expected.words().begin(), v_expected.words().end()),
                        V.row_offset(h, slot), V.row_words, what + " values");
          }
        if (kf == Format::Kivi2) {  // keys stay in the row for kivi_key_write, untouched by rope_dim 0
          CHECK(std::ranges::all_of(k_got, [](uint32_t w) { return w == 0; }));
          CHECK(download<float>(qkv_buffer, qkv.size()) == qkv);
        }
      }
    }
  }
  CHECK(context().validation_messages() == 0);
}

TEST_CASE("kivi_key_write: per-channel blocks before attention, the f16 window after, bit for bit through the slot table") {
  const uint32_t wg = workgroup_size();
  gpu::Pipeline pipe(context(), {Id::kivi_key_write, 4, sizeof(params::KiviKeyWriteParams), {wg}});
  for (uint32_t hd : {48u, 64u, 128u}) {
    // blocks of 12 over 50 slots: neither divides the other, the last block is short
    const uint32_t capacity = 50, T = 12, n_kv_head = 2, q_dim = 3 * hd, stride = q_dim + 2 * n_kv_head * hd;
    const kv::TensorLayout K = kv::tensor_layout(Encoding::Q2Channel, n_kv_head, capacity, hd, 0, T);
    const kv::TensorLayout V = kv::tensor_layout(Encoding::F16, n_kv_head, capacity, hd, 0, 0);
    kv::TensorImage expected(K);
    std::vector<kv::SlotTable> tables(n_kv_head, kv::SlotTable(capacity, T));
    gpu::Buffer k_cache = upload(std::vector<uint32_t>(K.total_words, 0u), "k cache");
    int32_t next_position = 0;
    auto step = [&](uint32_t n, uint32_t seed) {
      const std::vector<float> qkv = kv_values(size_t(n) * stride, hd, seed);
      std::vector<int32_t> slots(size_t(n) * n_kv_head), open(n_kv_head), positions;
      for (uint32_t t = 0; t < n; ++t, ++next_position) {
        positions.push_back(next_position);
        for (uint32_t h = 0; h < n_kv_head; ++h) slots[t * n_kv_head + h] = tables[h].assign(next_position);
      }
      for (uint32_t h = 0; h < n_kv_head; ++h) {
        open[h] = tables[h].open_block();
        std::vector<int32_t> head_slots;
        std::vector<float> keys;
        for (uint32_t t = 0; t < n; ++t) {
          head_slots.push_back(slots[t * n_kv_head + h]);
          keys.insert(keys.end(), qkv.begin() + t * stride + q_dim + h * hd, qkv.begin() + t * stride + q_dim + (h + 1) * hd);
        }
        expected.write(h, head_slots, keys, open[h]);
        expected.write_window(h, head_slots, positions, keys, open[h]);
      }
      gpu::Buffer qkv_buffer = upload(qkv, "qkv"), slot_buffer = upload(slots, "slots"),
                  open_buffer = upload(open, "open blocks");
      params::KiviKeyWriteParams p{n, n_kv_head, hd, capacity, stride, q_dim, kv_layout(K, V, 0)};
      gpu::Recorder rec(context());
      rec.begin();
      rec.dispatch(pipe, {qkv_buffer, slot_buffer, open_buffer, k_cache}, p, n_kv_head);  // before attention
      rec.barrier();
      p.phase = 1;  // after attention
      rec.dispatch(pipe, {qkv_buffer, slot_buffer, open_buffer, k_cache}, p, n_kv_head);
      rec.submit_and_wait();
      // Every live slot's words: its code row in a sealed block (and the
      // block's params), its window row in the open block.
      const auto got = download<uint32_t>(k_cache, K.total_words);
      const std::vector<uint32_t> cpu(expected.words().begin(), expected.words().end());
      const std::string what = fmt::format("kivi_key_write head_dim {} after position {}", hd, next_position);
      for (uint32_t h = 0; h < n_kv_head; ++h)
        for (uint32_t s = 0; s < capacity; ++s) {
          if (tables[h].position(s) < 0) continue;
          const uint32_t block = s / T;
          if (int32_t(block) == tables[h].open_block()) {
            check_words(got, cpu, K.recent_offset + (h * K.recent_rows + s % T) * (hd / 2), hd / 2, what + " window");
          } else {
            check_words(got, cpu, K.row_offset(h, s), K.code_words, what + " codes");
            check_words(got, cpu, K.params_offset + (h * K.n_blocks + block) * hd, hd, what + " params");
          }
        }
    };
    uint32_t seed = hd;
    for (uint32_t n : {5u, 1u, 9u, 12u, 2u, 14u}) step(n, ++seed);  // 43 positions: blocks 0-2 sealed
    // Truncate to position 20 (holes in sealed block 1), then fill to the end.
    for (auto& t : tables)
      for (uint32_t s = 0; s < capacity; ++s)
        if (t.position(s) >= 20) t.release(s);
    next_position = 20;
    step(3, ++seed);
    step(23, ++seed);
    CHECK(tables[0].assignable() == 0);
  }
  CHECK(context().validation_messages() == 0);
}

TEST_CASE("attention: every key x value format against CPU attention over the dequantized cache") {
  struct Case {
    uint32_t head_dim, group, n_head, n_kv_head, n_tokens, capacity, token_group;
  };
  const Case cases[] = {{48, 16, 6, 6, 1, 40, 32}, {48, 12, 4, 2, 5, 50, 12}, {64, 32, 8, 2, 3, 70, 16},
                        {128, 32, 2, 1, 2, 33, 32}, {48, 24, 2, 2, 1, 7, 32}};
  // The common workgroup size, and the 256 and 1024 invocations a GPU gets
  // (the values pass then splits the slots into slices: attention.comp).
  std::vector<uint32_t> sizes{workgroup_size()};
  for (uint32_t gpu_size : {256u, 1024u})
    if (gpu_size <= context().info().max_workgroup_size_x) sizes.push_back(gpu_size);
  for (uint32_t wg : sizes)
  for (Format kf : kFormats) {
    for (Format vf : kFormats) {
      gpu::Pipeline pipe(context(), {attention_id(kf, vf), 11, sizeof(params::AttentionParams), {wg}});
      // Sparse-V (values weighted below the threshold skipped) for one format in each role.
      const std::vector<float> thresholds = kf == vf ? std::vector<float>{0.0f, 0.02f} : std::vector<float>{0.0f};
      for (const float sparse_v : thresholds)
      for (const Case& c : cases) {
        const uint32_t hd = c.head_dim;
        const kv::TensorLayout K = kv::tensor_layout(kv::encoding(kf, kv::Role::Keys), c.n_kv_head, c.capacity, hd,
                                                     c.group, c.token_group);
        const kv::TensorLayout V = kv::tensor_layout(kv::encoding(vf, kv::Role::Values), c.n_kv_head, c.capacity,
                                                     hd, c.group, c.token_group);
        // Fill every slot but a few through the slot tables (kivi2 keys: the
        // last block stays open, in the window), then free some slots: holes.
        kv::TensorImage k_image(K), v_image(V);
        const uint32_t block_slots = K.encoding == Encoding::Q2Channel ? K.token_group : 1;
        std::vector<kv::SlotTable> tables(c.n_kv_head, kv::SlotTable(c.capacity, block_slots));
        const uint32_t n_positions = c.capacity - 3;
        const std::vector<float> keys = kv_values(size_t(n_positions) * hd, hd, 31 + hd);
        const std::vector<float> values = kv_values(size_t(n_positions) * hd, hd, 32 + hd);
        std::vector<int32_t> slot_pos(size_t(c.n_kv_head) * c.capacity, -1), open(c.n_kv_head);
        for (uint32_t h = 0; h < c.n_kv_head; ++h) {
          std::vector<int32_t> slots, positions;
          std::vector<float> k_in, v_in;
          for (uint32_t p = 0; p < n_positions; ++p) {
            positions.push_back(int32_t(p));
            slots.push_back(tables[h].assign(int32_t(p)));
            for (uint32_t d = 0; d < hd; ++d) {
              k_in.push_back(keys[p * hd + d] + float(h));
              v_in.push_back(values[p * hd + d] - float(h));
            }
          }
          open[h] = tables[h].open_block();
          k_image.write(h, slots, k_in, open[h]);
          v_image.write(h, slots, v_in, open[h]);
          k_image.write_window(h, slots, positions, k_in, open[h]);  // kivi2: the f16 windows
          v_image.write_window(h, slots, positions, v_in, open[h]);
          for (uint32_t s = 0; s < c.capacity; s += 5) tables[h].release(s);  // holes
          for (uint32_t s = 0; s < c.capacity; ++s) slot_pos[h * c.capacity + s] = tables[h].position(s);
        }
        std::vector<int32_t> query_pos(c.n_tokens);
        for (uint32_t t = 0; t < c.n_tokens; ++t) query_pos[t] = int32_t(n_positions) - 1 - int32_t(c.n_tokens) + 1 + int32_t(t) - 2 * (t % 2);
        const uint32_t q_stride = (c.n_head + 2 * c.n_kv_head) * hd;
        std::mt19937 rng(hd + c.capacity);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> qkv(size_t(c.n_tokens) * q_stride);
        for (float& x : qkv) x = normal(rng);
        gpu::Buffer q_buffer = upload(qkv, "qkv"),
                    k_buffer = upload(std::vector<uint32_t>(k_image.words().begin(), k_image.words().end()), "k"),
                    v_buffer = upload(std::vector<uint32_t>(v_image.words().begin(), v_image.words().end()), "v"),
                    slot_buffer = upload(slot_pos, "slot positions"), qpos_buffer = upload(query_pos, "query positions"),
                    open_buffer = upload(open, "open blocks");
        gpu::Buffer out(context(), size_t(c.n_tokens) * c.n_head * hd * 4, gpu::MemoryUse::Device, "out");
        gpu::Buffer probs(context(), size_t(c.n_tokens) * c.n_head * c.capacity * 4, gpu::MemoryUse::Device, "probs");
        params::AttentionParams p{c.n_tokens, c.n_head, c.n_kv_head, hd, c.capacity, c.capacity,
                                  1.0f / std::sqrt(float(hd)), q_stride, kv_layout(K, V, c.group)};
        p.sparse_v = sparse_v;
        gpu::Recorder rec(context());
        rec.begin();
        // bindings 8, 9 (rolling only) and 10 (step rows, off) are not read
        rec.dispatch(pipe,
                     {q_buffer, k_buffer, v_buffer, slot_buffer, qpos_buffer, out, probs, open_buffer, slot_buffer,
                      slot_buffer, slot_buffer},
                     p, c.n_head, c.n_tokens);
        rec.submit_and_wait();

        std::vector<float> expected(size_t(c.n_tokens) * c.n_head * hd, 0.0f);
        for (uint32_t t = 0; t < c.n_tokens; ++t)
          for (uint32_t h = 0; h < c.n_head; ++h) {
            const uint32_t kvh = h / (c.n_head / c.n_kv_head);
            std::vector<float> ks, vs, row(hd);
            uint32_t n = 0;
            for (uint32_t s = 0; s < c.capacity; ++s) {
              const int32_t sp = slot_pos[kvh * c.capacity + s];
              if (sp < 0 || sp > query_pos[t]) continue;
              const kv::TensorImage::Query query{query_pos[t], open[kvh], open[kvh]};
              k_image.read_for_query(kvh, s, sp, query, row);
              ks.insert(ks.end(), row.begin(), row.end());
              v_image.read_for_query(kvh, s, sp, query, row);
              vs.insert(vs.end(), row.begin(), row.end());
              ++n;
            }
            if (n == 0) continue;
            reference::attention_head(std::span(expected).subspan((size_t(t) * c.n_head + h) * hd, hd),
                                      std::span(qkv).subspan(size_t(t) * q_stride + h * hd, hd), ks, vs, n, hd, {},
                                      0.0f, sparse_v);
          }
        const std::vector<float> got = download<float>(out, expected.size());
        double err = 0, norm = 0;
        size_t worst = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          REQUIRE_MESSAGE(std::isfinite(got[i]), "non-finite output at " << i);
          const double d = double(got[i]) - expected[i];
          err += d * d;
          norm += double(expected[i]) * expected[i];
          if (std::fabs(d) > std::fabs(double(got[worst]) - expected[worst])) worst = i;
        }
        // f32 summation order and exp's few ulp (as for the f32/f16 attention in test_ops.cpp)
        CHECK_MESSAGE(err / norm <= 1e-7,
                      fmt::format("attention k={} v={} head_dim {} group {} capacity {} workgroup {} sparse_v {}: NMSE "
                                  "{:.3g}; worst index {}: gpu {} cpu {}",
                                  kv::format_name(kf), kv::format_name(vf), hd, c.group, c.capacity, wg, sparse_v,
                                  err / norm, worst, got[worst], expected[worst]));
      }
    }
  }
  CHECK(context().validation_messages() == 0);
}

// kivi2's recent tokens in f16, as the forward pass records a step:
// rope_kv_write, kivi_key_write (blocks), attention with the step's rows,
// then kivi_key_write (key window) and kivi_value_window. Every step's
// attention against the CPU rule (TensorImage::read_for_query) and every word
// of both caches against the CPU image, through prefills that span several
// blocks, single tokens, and a truncation.
TEST_CASE("kivi2: a step reads its own block's keys and the newest values in f16, windows written after attention") {
  const uint32_t wg = workgroup_size(), n_head = 4, n_kv_head = 2, capacity = 60, T = 8;
  const std::pair<Format, Format> pairs[] = {{Format::Kivi2, Format::Kivi2}, {Format::F16, Format::Kivi2},
                                             {Format::Kivi2, Format::Q4}};
  gpu::Pipeline key_write(context(), {Id::kivi_key_write, 4, sizeof(params::KiviKeyWriteParams), {wg}});
  gpu::Pipeline value_window(context(), {Id::kivi_value_window, 3, sizeof(params::KiviValueWindowParams), {wg}});
  for (const auto& [kf, vf] : pairs) {
    gpu::Pipeline write(context(), {rope_kv_write_id(kf, vf), 6, sizeof(params::RopeKvWriteParams), {wg}});
    gpu::Pipeline attend(context(), {attention_id(kf, vf), 11, sizeof(params::AttentionParams), {wg}});
    for (const Shape s : {Shape{48, 16}, Shape{64, 32}}) {
      const uint32_t hd = s.head_dim, q_dim = n_head * hd, kv_dim = n_kv_head * hd, stride = q_dim + 2 * kv_dim;
      const kv::TensorLayout K = kv::tensor_layout(kv::encoding(kf, kv::Role::Keys), n_kv_head, capacity, hd, s.group, T);
      const kv::TensorLayout V = kv::tensor_layout(kv::encoding(vf, kv::Role::Values), n_kv_head, capacity, hd, s.group, T);
      const params::KvLayout layout = kv_layout(K, V, s.group);
      kv::TensorImage k_image(K), v_image(V);
      const uint32_t block_slots = K.encoding == Encoding::Q2Channel ? T : 1;
      std::vector<kv::SlotTable> tables(n_kv_head, kv::SlotTable(capacity, block_slots));
      gpu::Buffer k_cache = upload(std::vector<uint32_t>(K.total_words, 0u), "k cache");
      gpu::Buffer v_cache = upload(std::vector<uint32_t>(V.total_words, 0u), "v cache");
      int32_t next_position = 0;
      uint32_t seed = 100 + hd;
      auto step = [&](uint32_t n) {
        const std::string what = fmt::format("k={} v={} head_dim {} step of {} at position {}", kv::format_name(kf),
                                             kv::format_name(vf), hd, n, next_position);
        const std::vector<float> qkv = kv_values(size_t(n) * stride, hd, ++seed);
        std::vector<int32_t> positions(n), slots(size_t(n) * n_kv_head), open(n_kv_head);
        for (uint32_t t = 0; t < n; ++t) {
          positions[t] = next_position++;
          for (uint32_t h = 0; h < n_kv_head; ++h) slots[t * n_kv_head + h] = tables[h].assign(positions[t]);
        }
        std::vector<int32_t> slot_pos(size_t(n_kv_head) * capacity);
        for (uint32_t h = 0; h < n_kv_head; ++h) {
          open[h] = tables[h].open_block();
          for (uint32_t sl = 0; sl < capacity; ++sl) slot_pos[h * capacity + sl] = tables[h].position(sl);
        }
        // This head's keys and values of the step, as the rows hold them.
        auto head_rows = [&](uint32_t h, uint32_t offset) {
          std::vector<float> rows;
          for (uint32_t t = 0; t < n; ++t)
            rows.insert(rows.end(), qkv.begin() + t * stride + offset + h * hd, qkv.begin() + t * stride + offset + (h + 1) * hd);
          return rows;
        };
        auto head_slots = [&](uint32_t h) {
          std::vector<int32_t> out;
          for (uint32_t t = 0; t < n; ++t) out.push_back(slots[t * n_kv_head + h]);
          return out;
        };
        for (uint32_t h = 0; h < n_kv_head; ++h) {
          k_image.write(h, head_slots(h), head_rows(h, q_dim), open[h]);
          v_image.write(h, head_slots(h), head_rows(h, q_dim + kv_dim), open[h]);
        }
        // The CPU's attention, every query of the step.
        std::vector<float> expected(size_t(n) * n_head * hd, 0.0f);
        for (uint32_t t = 0; t < n; ++t)
          for (uint32_t h = 0; h < n_head; ++h) {
            const uint32_t kvh = h / (n_head / n_kv_head);
            const std::vector<float> k_rows = head_rows(kvh, q_dim), v_rows = head_rows(kvh, q_dim + kv_dim);
            const int32_t own = slots[t * n_kv_head + kvh];
            const kv::TensorImage::Query kq{positions[t], open[kvh], own >= 0 ? own / int32_t(K.token_group) : -1,
                                            positions[0], k_rows};
            const kv::TensorImage::Query vq{positions[t], open[kvh], -1, positions[0], v_rows};
            std::vector<float> ks, vs, row(hd);
            uint32_t visible = 0;
            for (uint32_t sl = 0; sl < capacity; ++sl) {
              const int32_t sp = slot_pos[kvh * capacity + sl];
              if (sp < 0 || sp > positions[t]) continue;
              k_image.read_for_query(kvh, sl, sp, kq, row);
              ks.insert(ks.end(), row.begin(), row.end());
              v_image.read_for_query(kvh, sl, sp, vq, row);
              vs.insert(vs.end(), row.begin(), row.end());
              ++visible;
            }
            reference::attention_head(std::span(expected).subspan((size_t(t) * n_head + h) * hd, hd),
                                      std::span(qkv).subspan(size_t(t) * stride + h * hd, hd), ks, vs, visible, hd);
          }
        for (uint32_t h = 0; h < n_kv_head; ++h) {
          k_image.write_window(h, head_slots(h), positions, head_rows(h, q_dim), open[h]);
          v_image.write_window(h, head_slots(h), positions, head_rows(h, q_dim + kv_dim), open[h]);
        }

        gpu::Buffer qkv_buffer = upload(qkv, "qkv"), pos_buffer = upload(positions, "positions"),
                    slot_buffer = upload(slots, "slots"), open_buffer = upload(open, "open blocks"),
                    slot_pos_buffer = upload(slot_pos, "slot positions");
        gpu::Buffer out(context(), size_t(n) * n_head * hd * 4, gpu::MemoryUse::Device, "out");
        gpu::Buffer probs(context(), size_t(n) * n_head * capacity * 4, gpu::MemoryUse::Device, "probs");
        // rope_dim 0: k and v reach the cache as they are, so the CPU encodes the very same floats.
        const params::RopeKvWriteParams wp{n, n_head, n_kv_head, hd, 0, 10000.0f, capacity, stride, layout};
        params::KiviKeyWriteParams kp{n, n_kv_head, hd, capacity, stride, q_dim, layout};
        params::AttentionParams ap{n, n_head, n_kv_head, hd, capacity, capacity, 1.0f / std::sqrt(float(hd)), stride,
                                   layout};
        ap.step_rows = 1;
        const params::KiviValueWindowParams vp{n, n_kv_head, hd, stride, q_dim + kv_dim, layout};
        gpu::Recorder rec(context());
        rec.begin();
        rec.dispatch(write, {qkv_buffer, pos_buffer, slot_buffer, k_cache, v_cache, pos_buffer}, wp, n_head + n_kv_head, n);
        rec.barrier();
        if (kf == Format::Kivi2) rec.dispatch(key_write, {qkv_buffer, slot_buffer, open_buffer, k_cache}, kp, n_kv_head);
        rec.barrier();
        rec.dispatch(attend,
                     {qkv_buffer, k_cache, v_cache, slot_pos_buffer, pos_buffer, out, probs, open_buffer, slot_pos_buffer,
                      slot_pos_buffer, slot_buffer},
                     ap, n_head, n);
        rec.barrier();
        kp.phase = 1;
        if (kf == Format::Kivi2) rec.dispatch(key_write, {qkv_buffer, slot_buffer, open_buffer, k_cache}, kp, n_kv_head);
        if (vf == Format::Kivi2) rec.dispatch(value_window, {qkv_buffer, pos_buffer, v_cache}, vp, n_kv_head, std::min(n, T));
        rec.submit_and_wait();

        const std::vector<float> got = download<float>(out, expected.size());
        double err = 0, norm = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          REQUIRE_MESSAGE(std::isfinite(got[i]), what << ": non-finite output at " << i);
          err += (double(got[i]) - expected[i]) * (double(got[i]) - expected[i]);
          norm += double(expected[i]) * expected[i];
        }
        CHECK_MESSAGE(err / norm <= 1e-7, what << ": attention NMSE " << err / norm);
        // Every word: codes, scales, windows and tags (both start zeroed).
        check_words(download<uint32_t>(k_cache, K.total_words),
                    std::vector<uint32_t>(k_image.words().begin(), k_image.words().end()), 0, K.total_words, what + " keys");
        check_words(download<uint32_t>(v_cache, V.total_words),
                    std::vector<uint32_t>(v_image.words().begin(), v_image.words().end()), 0, V.total_words,
                    what + " values");
      };
      for (uint32_t n : {19u, 1u, 1u, 6u, 1u}) step(n);  // a prefill over three blocks, then one at a time
      // Truncate to 22 (inside the open block, under the value window), then a prefill over blocks.
      for (auto& t : tables)
        for (uint32_t sl = 0; sl < capacity; ++sl)
          if (t.position(sl) >= 22) t.release(sl);
      next_position = 22;
      for (uint32_t n : {17u, 1u}) step(n);
    }
  }
  CHECK(context().validation_messages() == 0);
}

// The Hadamard rotation (kv/hadamard.h) on the device: quantized keys mixed
// before quantizing, queries mixed and scaled, bit for bit like the CPU, at
// every head size class (P * M with M = 1, 3, 5; up to the largest head).
TEST_CASE("rope_kv_write: Hadamard-mixed keys and queries bit for bit like kv::hadamard_mix") {
  const uint32_t wg = workgroup_size(), n_head = 3, n_kv_head = 2, n_tokens = 4, capacity = 9;
  for (Format kf : {Format::Q8, Format::Q4, Format::Kivi2}) {
    gpu::Pipeline pipe(context(), {rope_kv_write_id(kf, Format::F16), 6, sizeof(params::RopeKvWriteParams), {wg}});
    for (const Shape s : {Shape{48, 16}, Shape{64, 32}, Shape{80, 16}, Shape{96, 32}, Shape{128, 32}, Shape{256, 32}}) {
      const uint32_t hd = s.head_dim, q_dim = n_head * hd, kv_dim = n_kv_head * hd, stride = q_dim + 2 * kv_dim;
      const kv::TensorLayout K = kv::tensor_layout(kv::encoding(kf, kv::Role::Keys), n_kv_head, capacity, hd, s.group, 4);
      const kv::TensorLayout V = kv::tensor_layout(Encoding::F16, n_kv_head, capacity, hd, s.group, 4);
      const std::vector<float> qkv = kv_values(size_t(n_tokens) * stride, hd, 7 * hd);
      const std::vector<int32_t> positions{0, 1, 2, 3};
      std::vector<int32_t> slots(size_t(n_tokens) * n_kv_head);
      for (uint32_t i = 0; i < slots.size(); ++i) slots[i] = int32_t(i % capacity);
      gpu::Buffer qkv_buffer = upload(qkv, "qkv"), pos_buffer = upload(positions, "positions"),
                  slot_buffer = upload(slots, "slots");
      gpu::Buffer k_cache = upload(std::vector<uint32_t>(K.total_words, 0u), "k cache");
      gpu::Buffer v_cache = upload(std::vector<uint32_t>(V.total_words, 0u), "v cache");
      // rope_dim 0: no RoPE, so the CPU mixes the very same floats.
      params::RopeKvWriteParams p{n_tokens, n_head, n_kv_head, hd, 0, 10000.0f, capacity, stride,
                                  kv_layout(K, V, s.group)};
      p.hadamard = 1;
      gpu::Recorder rec(context());
      rec.begin();
      rec.dispatch(pipe, {qkv_buffer, pos_buffer, slot_buffer, k_cache, v_cache, pos_buffer}, p, n_head + n_kv_head,
                   n_tokens);
      rec.submit_and_wait();
      const std::string what = fmt::format("Hadamard k={} head_dim {}", kv::format_name(kf), hd);
      const std::vector<float> row_out = download<float>(qkv_buffer, qkv.size());
      const auto k_got = download<uint32_t>(k_cache, K.total_words);
      kv::TensorImage expected(K);
      for (uint32_t t = 0; t < n_tokens; ++t) {
        for (uint32_t h = 0; h < n_head; ++h) {  // queries: mixed and scaled by 1/P, in place
          std::vector<float> q(qkv.begin() + t * stride + h * hd, qkv.begin() + t * stride + (h + 1) * hd);
          kv::hadamard_mix_query(q);
          for (uint32_t d = 0; d < hd; ++d)
            if (row_out[t * stride + h * hd + d] != q[d]) {
              FAIL_CHECK(what << ": query " << t << "/" << h << " element " << d << " is "
                              << row_out[t * stride + h * hd + d] << " on the GPU, " << q[d] << " on the CPU");
              break;
            }
        }
        for (uint32_t h = 0; h < n_kv_head; ++h) {
          std::vector<float> k(qkv.begin() + t * stride + q_dim + h * hd, qkv.begin() + t * stride + q_dim + (h + 1) * hd);
          kv::hadamard_mix(k);
          const int32_t slot = slots[t * n_kv_head + h];
          if (kf == Format::Kivi2) {  // left mixed in the row for kivi_key_write
            CHECK_MESSAGE(std::equal(k.begin(), k.end(), row_out.begin() + t * stride + q_dim + h * hd),
                          what << ": mixed key " << t << "/" << h << " in the row");
          } else {
            expected.write(h, std::span(&slot, 1), k);
            check_words(k_got, std::vector<uint32_t>(expected.words().begin(), expected.words().end()),
                        K.row_offset(h, slot), K.row_words, what + " key codes");
          }
        }
      }
    }
  }
  CHECK(context().validation_messages() == 0);
}
