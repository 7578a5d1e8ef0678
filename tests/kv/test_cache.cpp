// The slot-table cache: slots assigned, freed and reused without moving the
// cache; device memory that matches the format; a full context is an error
// that changes nothing.
#include <doctest/doctest.h>

#include <numeric>
#include <set>

#include <cstdlib>

#include "gpu/context.h"
#include "kv/cache.h"

using namespace kvscope;

namespace {
gpu::Context& context() {
  static gpu::Context ctx = [] {
    gpu::ContextOptions o;
    o.validation = true;
    return gpu::Context(o);
  }();
  return ctx;
}
}  // namespace

TEST_CASE("kv: slot table assigns the lowest free slot, reuses freed ones, tracks the high-water mark") {
  kv::SlotTable t(4);
  CHECK(t.assign(10) == 0);
  CHECK(t.assign(11) == 1);
  CHECK(t.assign(12) == 2);
  CHECK(t.high_water() == 3);
  t.release(1);
  CHECK(t.live() == 2);
  CHECK(t.position(1) == -1);
  CHECK(t.assign(13) == 1);  // the freed slot, not a new one
  CHECK(t.assign(14) == 3);
  CHECK(t.assign(15) == -1);  // full
  t.release(3);
  t.release(2);
  CHECK(t.high_water() == 2);
  t.clear();
  CHECK(t.live() == 0);
  CHECK(t.high_water() == 0);
}

TEST_CASE("kv: cache reserve, context full, truncate") {
  kv::CacheShape shape{3, 2, 48};
  kv::CacheConfig cfg;
  cfg.capacity = 8;
  kv::KvCache cache(context(), shape, cfg, 4);
  std::vector<int32_t> pos{0, 1, 2, 3};
  cache.reserve(pos);
  CHECK(cache.tokens() == 4);
  CHECK(cache.scan_slots(2) == 4);
  std::vector<int32_t> more{4, 5, 6, 7};
  cache.reserve(more);
  std::vector<int32_t> one{8};
  CHECK_THROWS_AS(cache.reserve(one), kv::ContextFull);
  CHECK(cache.tokens() == 8);  // unchanged by the failure
  cache.truncate(5);
  CHECK(cache.tokens() == 5);
  CHECK(cache.table(1, 1).position(4) == 4);
  CHECK(cache.table(1, 1).position(5) == -1);
  cache.reserve(one);
  CHECK(cache.table(0, 0).position(5) == 8);
  // the device copy of the table follows the host
  std::vector<int32_t> device(2 * 8);
  const gpu::Binding b = cache.slot_positions(0);
  b.buffer->read_as<int32_t>(device, b.offset);
  CHECK(device[5] == 8);
  CHECK(device[8 + 6] == -1);
  CHECK(context().validation_messages() == 0);
}

TEST_CASE("kv: device memory matches the format") {
  kv::CacheShape shape{6, 6, 48};
  for (auto f : {kv::Format::F32, kv::Format::F16}) {
    kv::CacheConfig cfg;
    cfg.k_format = cfg.v_format = f;
    cfg.capacity = 256;
    kv::KvCache cache(context(), shape, cfg, 16);
    const double per_token = 6.0 * 6 * 48 * 2 * kv::bytes_per_element(f);
    CHECK(cache.bytes_per_token() == per_token);
    CHECK(cache.device_bytes() == static_cast<uint64_t>(per_token * 256));
  }
  CHECK(kv::parse_format("f16") == kv::Format::F16);
  CHECK_FALSE(kv::parse_format("q9").has_value());
}

TEST_CASE("kv: every format and group allocates exactly its layout, keys and values independent") {
  const kv::CacheShape shape{2, 3, 48};
  uint64_t f16_bytes = 0;
  for (kv::Format k : kv::all_formats()) {
    for (kv::Format v : kv::all_formats()) {
      for (uint32_t group : {0u, 12u, 24u}) {
        for (uint32_t capacity : {256u, 50u}) {
          kv::CacheConfig cfg;
          cfg.k_format = k;
          cfg.v_format = v;
          cfg.capacity = capacity;
          cfg.group_size = group;
          kv::KvCache cache(context(), shape, cfg, 8);
          const uint64_t layer = cache.key_layout().bytes() + cache.value_layout().bytes();
          CHECK(cache.device_bytes() == 2 * layer);
          CHECK(cache.device_bytes() == kv::cache_device_bytes(shape, cfg, 8));
          CHECK(cache.bytes_per_token() == double(cache.device_bytes()) / capacity);
          CHECK(cache.config().group_size == (group == 0 ? 16u : group));
          if (k == kv::Format::F16 && v == k && capacity == 256) f16_bytes = cache.device_bytes();
        }
      }
    }
  }
  // kivi2 at the full 256-token context, its two f16 windows of 32 (keys
  // and values) counted: 0.346 x f16; at 1024 tokens 0.251 x.
  kv::CacheConfig kivi;
  kivi.k_format = kivi.v_format = kv::Format::Kivi2;
  kivi.capacity = 256;
  CHECK(double(kv::cache_device_bytes(shape, kivi, 8)) / double(f16_bytes) == doctest::Approx(0.3464).epsilon(0.001));
  kv::CacheConfig f16_1k, kivi_1k = kivi;
  f16_1k.capacity = kivi_1k.capacity = 1024;
  CHECK(double(kv::cache_device_bytes(shape, kivi_1k, 8)) / double(kv::cache_device_bytes(shape, f16_1k, 8)) <= 0.26);
  kv::CacheConfig bad = kivi;
  bad.group_size = 20;
  CHECK_THROWS_WITH_AS(kv::KvCache(context(), shape, bad, 8), doctest::Contains("20 does not divide head_dim 48"),
                       std::invalid_argument);
  CHECK(context().validation_messages() == 0);
}

TEST_CASE("kv: a sliding-window layer holds only its window and one step, in every format; global layers all") {
  kv::CacheShape shape{3, 2, 48};
  shape.windows = {5, 0, 5};  // layers 0 and 2 local (window 5), layer 1 global
  for (kv::Format format : kv::all_formats()) {
    CAPTURE(kv::format_name(format));
    kv::CacheConfig cfg;
    cfg.k_format = cfg.v_format = format;
    cfg.capacity = 200;
    const uint32_t max_batch = 8;
    kv::KvCache cache(context(), shape, cfg, max_batch);
    const uint32_t local_slots = format == kv::Format::Kivi2 ? 64u : 13u;  // kivi2: whole blocks of 32, plus one
    CHECK(cache.layer_slots(0) == local_slots);
    CHECK(cache.layer_slots(1) == 200);
    CHECK(cache.layer_slots(2) == local_slots);
    CHECK(cache.device_bytes() == kv::cache_device_bytes(shape, cfg, max_batch));
    CHECK(cache.device_bytes() == 2 * (cache.key_layout(0).bytes() + cache.value_layout(0).bytes()) +
                                      cache.key_layout().bytes() + cache.value_layout().bytes());
    // 150 positions in steps of up to 8 (one of 3 too): the local layers keep
    // every position their next query can see, and never run out of slots.
    int32_t next = 0;
    for (uint32_t step = 0; next < 150; ++step) {
      const uint32_t n = step % 5 == 4 ? 3 : 8;
      std::vector<int32_t> positions(n);
      std::iota(positions.begin(), positions.end(), next);
      REQUIRE_NOTHROW(cache.reserve(positions));
      next += int32_t(n);
      for (uint32_t l : {0u, 2u})
        for (uint32_t h = 0; h < 2; ++h) {
          std::set<int32_t> held;
          for (int32_t p : cache.table(l, h).positions())
            if (p >= 0) held.insert(p);
          // What the step's first query (positions[0]) can see, and the step.
          for (int32_t p = std::max(0, positions[0] - 4); p < next; ++p) CHECK(held.count(p) == 1);
          CHECK(*held.begin() >= positions[0] - 4);
        }
      CHECK(cache.table(1, 0).live() == uint32_t(next));  // the global layer keeps all
      CHECK(cache.tokens() == uint32_t(next));            // counted on the global layer
    }
  }
  // A rolling policy or --spill cannot run on such a model; said before anything is made.
  kv::CacheConfig spill;
  spill.capacity = 64;
  spill.spill = true;
  CHECK_THROWS_WITH_AS(kv::check_cache_config(shape, spill, nullptr), doctest::Contains("sliding-window"),
                       std::invalid_argument);
  CHECK(context().validation_messages() == 0);
}

TEST_CASE("kv: kivi2 keys open one block at a time; the device mirror of the open blocks follows") {
  const kv::CacheShape shape{2, 2, 48};
  kv::CacheConfig cfg;
  cfg.k_format = kv::Format::Kivi2;
  cfg.v_format = kv::Format::Q8;
  cfg.capacity = 20;
  cfg.token_group = 8;  // blocks {0..7} {8..15} {16..19}
  kv::KvCache cache(context(), shape, cfg, 16);
  auto device_open = [&](uint32_t layer) {
    std::vector<int32_t> open(2);
    const gpu::Binding b = cache.open_blocks(layer);
    b.buffer->read_as<int32_t>(open, b.offset);
    return open;
  };
  CHECK(device_open(1) == std::vector<int32_t>{-1, -1});
  std::vector<int32_t> pos(10);
  for (int32_t i = 0; i < 10; ++i) pos[i] = i;
  cache.reserve(pos);
  CHECK(cache.table(1, 1).open_block() == 1);
  CHECK(device_open(1) == std::vector<int32_t>{1, 1});
  // Truncating into sealed block 0 leaves holes that are not reused: 20
  // slots, 5 live, 8 + 4 usable.
  cache.truncate(5);
  CHECK(cache.tokens() == 5);
  CHECK(device_open(0) == std::vector<int32_t>{-1, -1});
  std::vector<int32_t> twelve(12), thirteen(13);
  for (int32_t i = 0; i < 13; ++i) thirteen[i] = 5 + i;
  try {
    cache.reserve(thirteen);
    FAIL("13 tokens must not fit");
  } catch (const kv::ContextFull& e) {
    CHECK(std::string(e.what()).find("whole blocks of 8") != std::string::npos);
  }
  for (int32_t i = 0; i < 12; ++i) twelve[i] = 5 + i;
  cache.reserve(twelve);
  CHECK(cache.table(0, 0).position(8) == 5);
  CHECK(cache.table(0, 0).position(16) == 13);
  CHECK(cache.table(0, 0).open_block() == -1);  // the short last block is full
  CHECK(context().validation_messages() == 0);
}
