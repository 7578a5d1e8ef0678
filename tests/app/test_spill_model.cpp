// --spill end to end on the default model: with every kind of policy the
// budget holds at every step, entries do come back, the event log (recalls
// included) replays to the cache's tables, and a recalled entry's rows are
// the very rows it was evicted with — checked on layer 0, whose keys and
// values depend only on the token and its position, against a cache that
// never evicted.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>

#include "app/core/session.h"
#include "gpu/recorder.h"
#include "kv/event_log.h"
#include "kv/policy.h"
#include "kv/spill.h"
#include "tests/shared_engine.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {

std::vector<int32_t> story_prompt(const Engine& engine) {
  return engine.tokenizer().encode(
      "Once upon a time, there was a little girl named Lily. She lived in a small house near a big forest with "
      "her mom, her dad and her dog Max. Every morning Lily and Max went for a walk by the river, where the "
      "ducks swam and the frogs sang. One day Lily found a shiny red stone under a tree.",
      true);
}

// Layer 0's keys and values, as words, copied back from the device.
std::vector<uint32_t> download(gpu::Context& ctx, const gpu::Binding& b) {
  gpu::Buffer readback(ctx, b.buffer->size(), gpu::MemoryUse::Readback, "test readback");
  gpu::Recorder rec(ctx);
  rec.begin();
  rec.copy(*b.buffer, 0, readback, 0, b.buffer->size());
  rec.submit_and_wait();
  std::vector<uint32_t> words(b.buffer->size() / 4);
  readback.read_as<uint32_t>(words);
  return words;
}

}  // namespace

TEST_CASE("spill: budgets hold, entries come back, the log replays and recalled rows are exact") {
  Engine& engine = test::shared_engine();
  const std::vector<int32_t> prompt = story_prompt(engine);
  // The reference: every token kept (the capacity holds them all).
  kv::CacheConfig full_config;
  full_config.capacity = 256;
  Session reference(engine, full_config);
  Sampler greedy(SamplerConfig{0.0f, 0, 1.0f, 0});
  const std::vector<int32_t> reference_out = reference.generate(prompt, 120, greedy);
  std::vector<int32_t> sequence = prompt;
  sequence.insert(sequence.end(), reference_out.begin(), reference_out.end());

  for (const char* spec : {"h2o:budget=48,recent=16", "window:budget=48", "tova:budget=48", "snapkv:budget=48"}) {
    const std::string spec_text = spec;
    CAPTURE(spec_text);
    kv::CacheConfig config;
    config.capacity = 256;
    config.spill = true;
    Session session(engine, config);
    session.set_policy(kv::parse_policy_spec(spec));
    const kv::KvCache& cache = session.cache();
    const kv::EvictionPolicy& policy = cache.eviction()->policy();
    // Teacher-forced on the reference's tokens, so that layer 0's rows of
    // every position are those of the reference cache.
    session.logits_all({prompt.begin(), prompt.end()});
    session.end_prefill();
    for (size_t i = prompt.size(); i < sequence.size(); ++i) {
      session.logits_all({sequence[i]});
      for (uint32_t l = 0; l < cache.shape().n_layer; ++l)
        for (uint32_t h = 0; h < cache.shape().n_kv_head; ++h)
          REQUIRE(cache.table(l, h).live() <= policy.budget(l, h));
    }
    CHECK(cache.recalls() > 0);
    REQUIRE(cache.spill() != nullptr);
    CHECK(cache.spill()->entries() > 0);
    uint64_t recall_events = 0;
    for (const auto& e : cache.eviction()->log().events()) recall_events += std::holds_alternative<kv::RecallEvent>(e) ? 1 : 0;
    CHECK(recall_events == cache.recalls());

    const std::vector<kv::SlotTable> replayed = kv::replay(cache.eviction()->log());
    for (size_t i = 0; i < replayed.size(); ++i) {
      const auto a = replayed[i].positions(), b = cache.tables()[i].positions();
      REQUIRE_MESSAGE(std::equal(a.begin(), a.end(), b.begin(), b.end()), "table " << i << " differs after replay");
    }

    // Layer 0: every live slot holds exactly the reference's rows of its
    // position, recalled or never evicted.
    const kv::TensorLayout& K = cache.key_layout();
    const kv::TensorLayout& V = cache.value_layout();
    const auto keys = download(engine.context(), cache.keys(0)), values = download(engine.context(), cache.values(0));
    const auto ref_keys = download(engine.context(), reference.cache().keys(0));
    const auto ref_values = download(engine.context(), reference.cache().values(0));
    uint32_t recalled_checked = 0;
    for (uint32_t h = 0; h < cache.shape().n_kv_head; ++h) {
      for (uint32_t s = 0; s < cache.table(0, h).capacity(); ++s) {
        const int32_t p = cache.table(0, h).position(s);
        if (p < 0) continue;
        const int32_t ref_slot = [&] {
          for (uint32_t r = 0; r < reference.cache().table(0, h).capacity(); ++r)
            if (reference.cache().table(0, h).position(r) == p) return int32_t(r);
          return -1;
        }();
        REQUIRE(ref_slot >= 0);
        const bool k_same = std::equal(keys.begin() + K.row_offset(h, s), keys.begin() + K.row_offset(h, s) + K.row_words,
                                       ref_keys.begin() + K.row_offset(h, ref_slot));
        const bool v_same = std::equal(values.begin() + V.row_offset(h, s),
                                       values.begin() + V.row_offset(h, s) + V.row_words,
                                       ref_values.begin() + V.row_offset(h, ref_slot));
        CHECK_MESSAGE((k_same && v_same), fmt::format("layer 0 kv head {} slot {} (position {}) differs", h, s, p));
        for (const auto& e : cache.eviction()->log().events())
          if (const auto* r = std::get_if<kv::RecallEvent>(&e); r && r->layer == 0 && r->kv_head == h && r->position == p)
            ++recalled_checked;
      }
    }
    MESSAGE(spec_text << ": " << cache.recalls() << " recalls, " << cache.spill()->entries() << " entries spilled ("
                 << cache.spill()->host_bytes() << " bytes); " << recalled_checked
                 << " recall events of live layer-0 entries checked");
  }
  CHECK(engine.context().validation_messages() == 0);
}

TEST_CASE("spill: refused with a rolling policy and with kivi2 keys, saying what to change") {
  Engine& engine = test::shared_engine();
  kv::CacheConfig config;
  config.capacity = 128;
  config.spill = true;
  Session session(engine, config);
  CHECK_THROWS_WITH_AS(session.set_policy(kv::parse_policy_spec("streamingllm:sinks=4,window=60,rolling")),
                       doctest::Contains("leave out `rolling` or --spill"), std::invalid_argument);
  config.k_format = kv::Format::Kivi2;
  Session kivi(engine, config);
  CHECK_THROWS_WITH_AS(kivi.set_policy(kv::parse_policy_spec("window:budget=64")), doctest::Contains("--kv-k"),
                       std::invalid_argument);
}
