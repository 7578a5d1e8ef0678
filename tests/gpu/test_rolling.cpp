// Rolling StreamingLLM on the GPU against its CPU reference: keys stored
// un-rotated and turned inside attention at their cache-relative positions
// (shaders/attention.comp with AttentionParams::rolling) must give what the
// CPU gives by dequantizing each key (kv::TensorImage::read), rotating it with
// reference::rope at its rank among the head's live positions, and running
// reference::attention_head; and rope_kv_write with keys_unrotated must store
// keys exactly as kv::encode_row stores the raw rows.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "gpu/recorder.h"
#include "kv/cache.h"
#include "kv/formats.h"
#include "kv/hadamard.h"
#include "models/hparams.h"
#include "models/reference.h"
#include "shaders/common/params.h"
#include "tests/gpu/gpu_fixture.h"

using namespace kvscope;
using kv::Format;
using shaders::Id;
using namespace kvscope::test;

namespace {

std::vector<float> normal_floats(size_t n, uint32_t seed, float spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> v(n);
  for (float& x : v) x = kv::f32_from_f16(kv::f16_from_f32(normal(rng)));  // exact in an f16 cache
  return v;
}

Id attention_f16_values(Format k) {
  switch (k) {
    case Format::F32: return Id::attention_f32_f16;
    case Format::F16: return Id::attention_f16_f16;
    case Format::Q8: return Id::attention_q8_f16;
    case Format::Q4: return Id::attention_q4_f16;
    case Format::Kivi2: return Id::attention_kivi2_f16;
  }
  return Id::attention_f16_f16;
}

struct RollingCase {
  Format k_format;
  uint32_t head_dim, rope_dim, n_head, n_kv_head, n_tokens, capacity;
  RopeMode mode;
  bool freq_factors;
  bool hadamard = false;  // keys stored Hadamard-mixed (kv/hadamard.h); attention turns them back
};

// A cache that has evicted: positions 0..3 (sinks), then a window far past
// the capacity (positions up to ~10x it), holes between; the queries are the
// last n_tokens positions. Every key is stored un-rotated.
void check_rolling_attention(const RollingCase& c) {
  const uint32_t hd = c.head_dim, group = kv::default_group_size(hd);
  const kv::TensorLayout K = kv::tensor_layout(kv::encoding(c.k_format, kv::Role::Keys), c.n_kv_head, c.capacity,
                                               hd, group, 16);
  const kv::TensorLayout V = kv::tensor_layout(kv::encoding(Format::F16, kv::Role::Values), c.n_kv_head,
                                               c.capacity, hd, group, 16);
  const uint32_t block_slots = K.encoding == kv::Encoding::Q2Channel ? K.token_group : 1;
  const std::string what = fmt::format("rolling attention k={} head_dim {} rope_dim {} heads {}/{} tokens {} capacity {} "
                                       "mode {} factors {} hadamard {}",
                                       kv::format_name(c.k_format), hd, c.rope_dim, c.n_head, c.n_kv_head, c.n_tokens,
                                       c.capacity, int(c.mode), c.freq_factors, c.hadamard);
  // Positions held: 4 sinks, then the last (capacity - 6) of a long sequence.
  const int32_t last = int32_t(c.capacity) * 10 + 7;
  std::vector<int32_t> held = {0, 1, 2, 3};
  for (int32_t p = last - int32_t(c.capacity) + 7; p <= last; ++p) held.push_back(p);
  kv::TensorImage k_image(K), v_image(V);
  std::vector<kv::SlotTable> tables(c.n_kv_head, kv::SlotTable(c.capacity, block_slots));
  std::vector<int32_t> slot_pos(size_t(c.n_kv_head) * c.capacity), rope_pos(slot_pos.size()), open(c.n_kv_head);
  const std::vector<float> keys = normal_floats(held.size() * hd, 41 + hd, 2.0f);
  const std::vector<float> values = normal_floats(held.size() * hd, 42 + hd, 1.0f);
  for (uint32_t h = 0; h < c.n_kv_head; ++h) {
    std::vector<int32_t> slots;
    std::vector<float> k_in, v_in;
    for (size_t i = 0; i < held.size(); ++i) {
      slots.push_back(tables[h].assign(held[i]));
      for (uint32_t d = 0; d < hd; ++d) {
        k_in.push_back(keys[i * hd + d] + 0.5f * float(h));
        v_in.push_back(values[i * hd + d] - float(h));
      }
      if (c.hadamard) kv::hadamard_mix(std::span(k_in).last(hd));
    }
    open[h] = tables[h].open_block();
    k_image.write(h, slots, k_in, open[h]);
    v_image.write(h, slots, v_in, open[h]);
    k_image.write_window(h, slots, held, k_in, open[h]);  // kivi2 keys: the open block's rows, after attention
    v_image.write_window(h, slots, held, v_in, open[h]);
    if (block_slots == 1) tables[h].release(5 + h);  // a hole (an eviction): ranks close up behind it
    std::vector<int32_t> live;
    for (int32_t p : tables[h].positions())
      if (p >= 0) live.push_back(p);
    std::sort(live.begin(), live.end());
    for (uint32_t s = 0; s < c.capacity; ++s) {
      const int32_t p = tables[h].position(s);
      slot_pos[h * c.capacity + s] = p;
      rope_pos[h * c.capacity + s] =
          p < 0 ? -1 : int32_t(std::lower_bound(live.begin(), live.end(), p) - live.begin());
    }
  }
  std::vector<float> factors(c.rope_dim / 2, 1.0f);
  if (c.freq_factors)
    for (size_t i = 0; i < factors.size(); ++i) factors[i] = 1.0f + float(i % 5);
  // Queries: rotated (as rope_kv_write leaves them) at their cache-relative
  // position, which is their rank in head 0's table (the same in every head
  // here but the holes, as for a policy keeping the same tokens everywhere).
  std::vector<int32_t> query_pos(c.n_tokens), query_rope(c.n_tokens);
  for (uint32_t t = 0; t < c.n_tokens; ++t) {
    query_pos[t] = last - int32_t(c.n_tokens - 1 - t);
    for (uint32_t s = 0; s < c.capacity; ++s)
      if (slot_pos[s] == query_pos[t]) query_rope[t] = rope_pos[s];
  }
  const uint32_t q_stride = (c.n_head + 2 * c.n_kv_head) * hd;
  std::vector<float> qkv = normal_floats(size_t(c.n_tokens) * q_stride, 43 + hd, 1.0f);
  for (uint32_t t = 0; t < c.n_tokens; ++t)
    for (uint32_t h = 0; h < c.n_head; ++h)
      reference::rope(std::span(qkv).subspan(size_t(t) * q_stride + h * hd, hd), query_rope[t], c.rope_dim, 10000.0f,
                      c.mode, c.freq_factors ? std::span<const float>(factors) : std::span<const float>{});

  gpu::Buffer q_buffer = upload(qkv, "qkv"),
              k_buffer = upload(std::vector<uint32_t>(k_image.words().begin(), k_image.words().end()), "k"),
              v_buffer = upload(std::vector<uint32_t>(v_image.words().begin(), v_image.words().end()), "v"),
              slot_buffer = upload(slot_pos, "slot positions"), qpos_buffer = upload(query_pos, "query positions"),
              open_buffer = upload(open, "open blocks"), rope_buffer = upload(rope_pos, "rope positions"),
              factor_buffer = upload(factors, "frequency factors");
  gpu::Buffer out(context(), size_t(c.n_tokens) * c.n_head * hd * 4, gpu::MemoryUse::Device, "out");
  gpu::Buffer probs(context(), size_t(c.n_tokens) * c.n_head * c.capacity * 4, gpu::MemoryUse::Device, "probs");
  params::AttentionParams p{c.n_tokens, c.n_head, c.n_kv_head, hd, c.capacity, c.capacity,
                            1.0f / std::sqrt(float(hd)), q_stride,
                            {group, K.row_words, K.code_words, V.row_words, V.code_words, K.token_group, K.n_blocks,
                             K.params_offset, K.recent_offset}};
  p.rolling = 1;
  p.rope_dim = c.rope_dim;
  p.rope_theta = 10000.0f;
  p.rope_mode = c.mode == RopeMode::Normal ? 0u : 1u;
  p.has_freq_factors = c.freq_factors ? 1u : 0u;
  p.hadamard = c.hadamard ? 1u : 0u;
  const uint32_t wg = std::max(8u, context().subgroup_size());
  gpu::Pipeline pipe(context(), {attention_f16_values(c.k_format), 11, sizeof(params::AttentionParams), {wg}});
  gpu::Recorder rec(context());
  rec.begin();
  rec.dispatch(pipe,
               {q_buffer, k_buffer, v_buffer, slot_buffer, qpos_buffer, out, probs, open_buffer, rope_buffer,
                factor_buffer, rope_buffer},  // binding 10: step rows are off (p.step_rows 0)
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
        k_image.read(kvh, s, open[kvh], row);
        if (c.hadamard) kv::hadamard_unmix(row);
        reference::rope(row, rope_pos[kvh * c.capacity + s], c.rope_dim, 10000.0f, c.mode,
                        c.freq_factors ? std::span<const float>(factors) : std::span<const float>{});
        ks.insert(ks.end(), row.begin(), row.end());
        v_image.read(kvh, s, open[kvh], row);
        vs.insert(vs.end(), row.begin(), row.end());
        ++n;
      }
      reference::attention_head(std::span(expected).subspan((size_t(t) * c.n_head + h) * hd, hd),
                                std::span(qkv).subspan(size_t(t) * q_stride + h * hd, hd), ks, vs, n, hd);
    }
  std::vector<float> got(expected.size());
  out.read_as<float>(got);
  double err = 0, norm = 0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    REQUIRE_MESSAGE(std::isfinite(got[i]), what << ": non-finite output at " << i);
    const double d = double(got[i]) - expected[i];
    err += d * d;
    norm += double(expected[i]) * expected[i];
    if (std::fabs(d) > std::fabs(double(got[worst]) - expected[worst])) worst = i;
  }
  // The dequantized keys are the same values on both sides; what differs is
  // f32 summation order, and sin/cos/pow/exp to a few ulp at angles of up to
  // capacity radians: 1e-6 NMSE (the un-rolled formats test holds 1e-7 with
  // no trigonometry).
  CHECK_MESSAGE(err / norm <= 1e-6, fmt::format("{}: NMSE {:.3g}; worst index {}: gpu {} cpu {}", what, err / norm,
                                                worst, got[worst], expected[worst]));
}

}  // namespace

TEST_CASE("rolling attention: un-rotated f16/q8/q4/kivi2/f32 keys (Hadamard-mixed or not) rotated at cache-relative positions match the CPU") {
  const RollingCase cases[] = {
      {Format::F16, 48, 48, 6, 6, 1, 128, RopeMode::Normal, false},
      {Format::Q8, 48, 48, 6, 6, 1, 128, RopeMode::Normal, false},
      {Format::F16, 64, 64, 8, 2, 3, 70, RopeMode::Normal, false},
      {Format::Q8, 64, 32, 4, 2, 2, 33, RopeMode::Normal, false},
      {Format::F16, 64, 64, 4, 2, 1, 40, RopeMode::Neox, true},
      {Format::Q4, 48, 48, 2, 1, 1, 50, RopeMode::Normal, false},
      {Format::F32, 128, 128, 2, 1, 2, 20, RopeMode::Normal, false},
      {Format::Kivi2, 48, 48, 2, 2, 1, 64, RopeMode::Normal, false},
      {Format::Q4, 48, 48, 2, 1, 1, 50, RopeMode::Normal, false, true},
      {Format::Q8, 64, 32, 4, 2, 2, 33, RopeMode::Neox, true, true},
      {Format::Kivi2, 80, 80, 2, 2, 1, 64, RopeMode::Normal, false, true},
  };
  for (const RollingCase& c : cases) check_rolling_attention(c);
  CHECK(context().validation_messages() == 0);
}

TEST_CASE("rope_kv_write with keys_unrotated stores the raw keys (and still rotates q)") {
  const uint32_t hd = 48, n_head = 2, n_kv_head = 1, n_tokens = 3, capacity = 8, group = 16;
  const uint32_t wg = std::max(8u, context().subgroup_size());
  const kv::TensorLayout K = kv::tensor_layout(kv::encoding(Format::Q8, kv::Role::Keys), n_kv_head, capacity, hd,
                                               group, 16);
  const kv::TensorLayout V = kv::tensor_layout(kv::encoding(Format::F16, kv::Role::Values), n_kv_head, capacity,
                                               hd, group, 16);
  const uint32_t stride = (n_head + 2 * n_kv_head) * hd;
  const std::vector<float> qkv = normal_floats(size_t(n_tokens) * stride, 7, 1.0f);
  const std::vector<int32_t> positions = {300, 301, 302}, slots = {5, 0, 2};
  gpu::Buffer qkv_buffer = upload(qkv, "qkv"), pos_buffer = upload(positions, "positions"),
              slot_buffer = upload(slots, "slots");
  gpu::Buffer k_cache(context(), K.bytes(), gpu::MemoryUse::Device, "k"), v_cache(context(), V.bytes(),
                                                                                  gpu::MemoryUse::Device, "v");
  k_cache.fill_zero();
  v_cache.fill_zero();
  params::RopeKvWriteParams p{n_tokens, n_head, n_kv_head, hd, hd, 10000.0f, capacity, stride,
                              {group, K.row_words, K.code_words, V.row_words, V.code_words, K.token_group, K.n_blocks,
                               K.params_offset, K.recent_offset}};
  p.keys_unrotated = 1;
  gpu::Pipeline pipe(context(), {Id::rope_kv_write_q8_f16, 6, sizeof(params::RopeKvWriteParams), {wg}});
  gpu::Recorder rec(context());
  rec.begin();
  rec.dispatch(pipe, {qkv_buffer, pos_buffer, slot_buffer, k_cache, v_cache, pos_buffer}, p, n_head + n_kv_head,
               n_tokens);
  rec.submit_and_wait();

  kv::TensorImage expected(K);
  std::vector<float> raw_keys;
  for (uint32_t t = 0; t < n_tokens; ++t)
    raw_keys.insert(raw_keys.end(), qkv.begin() + t * stride + n_head * hd, qkv.begin() + t * stride + (n_head + 1) * hd);
  expected.write(0, slots, raw_keys);
  std::vector<uint32_t> got(K.bytes() / 4);
  k_cache.read_as<uint32_t>(got);
  for (uint32_t t = 0; t < n_tokens; ++t)
    for (uint32_t w = 0; w < K.row_words; ++w) {
      const size_t i = size_t(slots[t]) * K.row_words + w;
      REQUIRE_MESSAGE(got[i] == expected.words()[i], "token " << t << " word " << w);
    }
  // q is rotated at its position as always (to the few ulp of sin and cos at
  // an angle of 301 radians: 1e-3 absolute on values of about 1).
  std::vector<float> got_qkv(qkv.size());
  qkv_buffer.read_as<float>(got_qkv);
  std::vector<float> q(qkv.begin() + stride, qkv.begin() + stride + hd);
  reference::rope(q, positions[1], hd, 10000.0f);
  for (uint32_t d = 0; d < hd; ++d)
    CHECK_MESSAGE(std::fabs(got_qkv[stride + d] - q[d]) <= 1e-3f, "q dim " << d << ": gpu " << got_qkv[stride + d]
                                                                        << " cpu " << q[d]);
  CHECK(context().validation_messages() == 0);
}
