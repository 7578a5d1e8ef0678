// The --spill host tier (kv/spill.h): key bounds really bound every logit of
// their block, a taken entry gives back the exact rows it was given, the
// candidates are exactly the entries whose probability beats the threshold
// (the bounds only skip blocks, never an entry that qualifies), the byte cap
// drops the oldest blocks, and an event log with recalls replays.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include "kv/cache.h"
#include "kv/event_log.h"
#include "kv/formats.h"
#include "kv/spill.h"

using namespace kvscope;

namespace {

std::vector<float> normal_floats(size_t n, std::mt19937& rng, float spread = 1.0f) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

struct Rows {
  std::vector<uint32_t> key, value;
};

Rows encode(const kv::TensorLayout& K, const kv::TensorLayout& V, std::span<const float> key,
            std::span<const float> value) {
  Rows r{std::vector<uint32_t>(K.row_words), std::vector<uint32_t>(V.row_words)};
  kv::encode_row(K, key, r.key);
  kv::encode_row(V, value, r.value);
  return r;
}

}  // namespace

TEST_CASE("spill: key bounds are upper bounds on q . k for every key of the block, on random data") {
  std::mt19937 rng(7);
  for (uint32_t head_dim : {8u, 48u, 64u}) {
    for (int trial = 0; trial < 50; ++trial) {
      kv::KeyBounds bounds;
      std::vector<std::vector<float>> keys;
      const int n = 1 + trial % 16;
      for (int i = 0; i < n; ++i) {
        keys.push_back(normal_floats(head_dim, rng, 1.0f + float(i % 3)));
        bounds.include(keys.back());
      }
      for (int qi = 0; qi < 10; ++qi) {
        const std::vector<float> q = normal_floats(head_dim, rng, 2.0f);
        const float bound = bounds.logit_bound(q);
        float best = -INFINITY;
        for (const auto& k : keys) {
          float dot = 0;
          for (uint32_t c = 0; c < head_dim; ++c) dot += q[c] * k[c];
          best = std::max(best, dot);
          // f32 sums in a different order: a relative slack of 1e-5 of the magnitudes
          float magnitude = 0;
          for (uint32_t c = 0; c < head_dim; ++c) magnitude += std::fabs(q[c] * k[c]);
          REQUIRE_MESSAGE(dot <= bound + 1e-5f * magnitude,
                          fmt::format("head_dim {} trial {}: q.k {} above the bound {}", head_dim, trial, dot, bound));
        }
        if (n == 1) CHECK(bound == doctest::Approx(best).epsilon(1e-5));  // one key: the bound is its logit
      }
    }
  }
}

TEST_CASE("spill: take gives back the exact rows, for every row format") {
  std::mt19937 rng(11);
  const uint32_t hd = 48;
  for (kv::Format f : {kv::Format::F32, kv::Format::F16, kv::Format::Q8, kv::Format::Q4}) {
    const auto K = kv::tensor_layout(kv::encoding(f, kv::Role::Keys), 2, 8, hd, 0, 0);
    const auto V = kv::tensor_layout(kv::encoding(f, kv::Role::Values), 2, 8, hd, 0, 0);
    kv::SpillTier tier(3, 2, K, V);
    std::vector<Rows> rows;
    for (int32_t p = 0; p < 40; ++p) {
      rows.push_back(encode(K, V, normal_floats(hd, rng), normal_floats(hd, rng)));
      tier.add(1, 1, p, 100 + p, rows.back().key, rows.back().value);
    }
    CHECK(tier.entries() == 40);
    CHECK(tier.host_bytes() > 0);
    for (int32_t p : {7, 0, 39, 16}) {
      const kv::SpilledEntry e = tier.take(1, 1, p);
      CHECK(e.position == p);
      CHECK(e.token == 100 + p);
      CHECK(e.key_words == rows[p].key);
      CHECK(e.value_words == rows[p].value);
      std::vector<float> decoded(hd);
      kv::decode_row(K, rows[p].key, decoded);
      CHECK(e.key == decoded);
      CHECK_FALSE(tier.contains(1, 1, p));
    }
    CHECK(tier.entries() == 36);
    CHECK_THROWS_AS(tier.take(1, 1, 7), std::out_of_range);
    CHECK_THROWS_AS(tier.take(0, 1, 8), std::out_of_range);  // another head
  }
}

TEST_CASE("spill: candidates are exactly the entries above the threshold, best first; bounds skip blocks") {
  std::mt19937 rng(5);
  const uint32_t hd = 16, n_queries = 2;
  const auto K = kv::tensor_layout(kv::encoding(kv::Format::F32, kv::Role::Keys), 1, 8, hd, 0, 0);
  const auto V = kv::tensor_layout(kv::encoding(kv::Format::F32, kv::Role::Values), 1, 8, hd, 0, 0);
  kv::SpillTier tier(1, 1, K, V, 0, 4);
  std::vector<std::vector<float>> keys;
  for (int32_t p = 0; p < 64; ++p) {
    // Blocks of 4 with their own scale: most blocks are far below the threshold.
    keys.push_back(normal_floats(hd, rng, p / 4 == 9 ? 3.0f : 0.3f));
    const Rows r = encode(K, V, keys.back(), normal_floats(hd, rng));
    tier.add(0, 0, p, p, r.key, r.value);
  }
  const std::vector<float> queries = normal_floats(size_t{n_queries} * hd, rng, 1.0f);
  const std::vector<float> log_z = {6.0f, 6.5f};
  const float scale = 0.25f, threshold = 0.05f;
  const auto got = tier.candidates(0, 0, queries, log_z, scale, threshold);
  std::vector<kv::SpillTier::Scored> want;
  for (int32_t p = 0; p < 64; ++p) {
    float score = 0;
    for (uint32_t i = 0; i < n_queries; ++i) {
      float dot = 0;
      for (uint32_t c = 0; c < hd; ++c) dot += queries[i * hd + c] * keys[p][c];
      score += std::exp(scale * dot - log_z[i]);
    }
    if (score > threshold) want.push_back({p, score});
  }
  std::sort(want.begin(), want.end(), [](const auto& a, const auto& b) { return a.score > b.score; });
  REQUIRE(got.size() == want.size());
  REQUIRE_FALSE(want.empty());  // the case must exercise recalls
  for (size_t i = 0; i < want.size(); ++i) {
    CHECK(got[i].position == want[i].position);
    CHECK(got[i].score == doctest::Approx(want[i].score).epsilon(1e-5));
  }
  CHECK(tier.blocks_checked() == 16);
  CHECK(tier.blocks_opened() < tier.blocks_checked());  // the bounds ruled blocks out unopened
}

TEST_CASE("spill: the byte cap drops the oldest blocks; kivi2 keys are refused with what to do") {
  const uint32_t hd = 8;
  const auto K = kv::tensor_layout(kv::encoding(kv::Format::F16, kv::Role::Keys), 1, 8, hd, 0, 0);
  const auto V = kv::tensor_layout(kv::encoding(kv::Format::F16, kv::Role::Values), 1, 8, hd, 0, 0);
  std::mt19937 rng(3);
  kv::SpillTier probe(1, 1, K, V);
  const Rows r0 = encode(K, V, normal_floats(hd, rng), normal_floats(hd, rng));
  probe.add(0, 0, 0, 0, r0.key, r0.value);
  const uint64_t per_entry = probe.host_bytes();
  kv::SpillTier tier(1, 1, K, V, per_entry * 20, 4);
  for (int32_t p = 0; p < 30; ++p) {
    const Rows r = encode(K, V, normal_floats(hd, rng), normal_floats(hd, rng));
    tier.add(0, 0, p, p, r.key, r.value);
    CHECK(tier.host_bytes() <= per_entry * 20);
  }
  CHECK(tier.dropped() > 0);
  CHECK_FALSE(tier.contains(0, 0, 0));  // the oldest went first
  CHECK(tier.contains(0, 0, 29));
  CHECK(tier.peak_host_bytes() <= per_entry * 20);

  const auto kivi = kv::tensor_layout(kv::encoding(kv::Format::Kivi2, kv::Role::Keys), 1, 32, hd, 0, 0);
  try {
    kv::SpillTier bad(1, 1, kivi, V);
    FAIL("kivi2 keys were accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("--kv-k") != std::string::npos);
  }
}

TEST_CASE("spill: an event log with recalls round-trips through JSONL and replays to the same tables") {
  // One layer, two heads, 4 slots: positions 0..3 written, 1 evicted in head
  // 0 and position 4 written (slot 1 in head 0), then position 1 recalled
  // into head 0 after evicting 2 (slot 2), as KvCache's recall logs it.
  kv::EventLog log(kv::TraceHeader{"window:budget=4", 1, 2, 4, 1, {}});
  const std::vector<int32_t> p4 = {0, 1, 2, 3}, t4 = {10, 11, 12, 13};
  log.written(0, p4, t4);
  kv::EvictionEvent e;
  e.step = 1, e.kv_head = 0, e.slot = 1, e.position = 1, e.token = 11;
  log.evicted(e);
  e.kv_head = 1;
  log.evicted(e);
  const std::vector<int32_t> p1 = {4}, t1 = {14};
  log.written(1, p1, t1);
  kv::EvictionEvent out;
  out.step = 2, out.kv_head = 0, out.slot = 2, out.position = 2, out.token = 12;
  log.evicted(out);
  kv::RecallEvent back;
  back.step = 2, back.kv_head = 0, back.slot = 2, back.position = 1, back.token = 11, back.score = 0.4f;
  log.recalled(back);
  std::stringstream jsonl;
  kv::write_jsonl(log, jsonl);
  const kv::EventLog read = kv::read_jsonl(jsonl, "test");
  const auto tables = kv::replay(read);
  CHECK(tables[0].position(0) == 0);
  CHECK(tables[0].position(1) == 4);
  CHECK(tables[0].position(2) == 1);  // recalled
  CHECK(tables[0].position(3) == 3);
  CHECK(tables[1].position(2) == 2);  // head 1 untouched by the recall
}
