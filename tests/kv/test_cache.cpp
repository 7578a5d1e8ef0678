// The slot-table cache: slots assigned, freed and reused without moving the
// cache; device memory that matches the format; a full context is an error
// that changes nothing.
#include <doctest/doctest.h>

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
