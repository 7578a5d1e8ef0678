// Eviction on the device, end to end on the default model: every policy
// keeps its budget at every step (prefill included), never drops a sink or a
// pinned token, and leaves an event log that replays to the cache's slot
// tables; the scores pass agrees with a CPU sum of the attention rows; `full`
// says clearly when the context is full.
#include <doctest/doctest.h>

#include <cmath>

#include "app/core/evaluation.h"
#include "app/core/session.h"
#include "kv/event_log.h"
#include "kv/policy.h"
#include "tests/shared_engine.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {

// About 150 tokens of story text.
std::vector<int32_t> long_prompt(const Engine& engine) {
  const std::string text =
      "Once upon a time, there was a little girl named Lily. She lived in a small house near a big forest with "
      "her mom, her dad and her dog Max. Every morning Lily and Max went for a walk by the river, where the "
      "ducks swam and the frogs sang. One day Lily found a shiny red stone under a tree. It was round and "
      "smooth and warm in her hand. She showed it to her mom, who smiled and said it was a magic stone. Lily "
      "put the stone in her pocket and ran back to the river to show Max. Max barked and wagged his tail. "
      "That night, the stone began to glow";
  return engine.tokenizer().encode(text, true);
}

constexpr uint32_t kCapacity = 256;
const kv::PinnedSpans kPins({kv::PinnedSpan{20, 24}});

struct EvictRun {
  std::unique_ptr<Session> session;
  std::vector<int32_t> generated;
};

EvictRun run_policy(const std::string& spec_text, uint32_t n_new) {
  Engine& engine = test::shared_engine();
  kv::CacheConfig cc;
  cc.capacity = kCapacity;
  EvictRun run;
  run.session = std::make_unique<Session>(engine, cc);
  run.session->set_policy(kv::parse_policy_spec(spec_text), kPins);
  Sampler sampler(SamplerConfig{0.0f, 0, 1.0f, 0});
  const kv::KvCache& cache = run.session->cache();
  const kv::EvictionPolicy& policy = cache.eviction()->policy();
  // After every decode step, straight from the tables (the log's occupancy
  // records cover the prefill steps too).
  auto check_tables = [&] {
    for (uint32_t l = 0; l < cache.shape().n_layer; ++l)
      for (uint32_t h = 0; h < cache.shape().n_kv_head; ++h)
        REQUIRE(cache.table(l, h).live() <= policy.budget(l, h));
    return true;
  };
  run.generated = run.session->generate(long_prompt(engine), n_new, sampler,
                                        [&](int32_t, const std::string&) { return check_tables(); });
  return run;
}

void check_invariants(const EvictRun& run) {
  const kv::KvCache& cache = run.session->cache();
  const kv::EvictionPolicy& policy = cache.eviction()->policy();
  const kv::EventLog& log = cache.eviction()->log();
  const uint32_t n_layer = cache.shape().n_layer, n_kv_head = cache.shape().n_kv_head;

  // The budget holds after every step, prefill chunks included.
  REQUIRE(log.occupancies().size() == cache.eviction()->steps());
  for (const kv::Occupancy& o : log.occupancies())
    for (uint32_t l = 0; l < n_layer; ++l)
      for (uint32_t h = 0; h < n_kv_head; ++h) {
        CAPTURE(o.step);
        CAPTURE(l);
        CAPTURE(h);
        REQUIRE(o.live[size_t{l} * n_kv_head + h] <= policy.budget(l, h));
      }
  CHECK(log.eviction_count() > 0);

  // Sinks and pinned tokens are still there, in every table.
  const int32_t written = static_cast<int32_t>(run.session->tokens().size());
  for (uint32_t l = 0; l < n_layer; ++l)
    for (uint32_t h = 0; h < n_kv_head; ++h) {
      const auto positions = cache.table(l, h).positions();
      auto held = [&](int32_t p) { return std::find(positions.begin(), positions.end(), p) != positions.end(); };
      for (int32_t p = 0; p < static_cast<int32_t>(policy.protection().sinks); ++p) CHECK(held(p));
      for (int32_t p = 20; p < 24; ++p) CHECK(held(p));
      // The newest token (the last one written) is always live.
      CHECK(held(written - 1));
    }

  // Replaying the log on empty tables rebuilds the cache's tables exactly.
  const std::vector<kv::SlotTable> replayed = kv::replay(log);
  REQUIRE(replayed.size() == cache.tables().size());
  for (size_t i = 0; i < replayed.size(); ++i) {
    CAPTURE(i);
    const auto a = replayed[i].positions(), b = cache.tables()[i].positions();
    CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
  }
}

}  // namespace

TEST_CASE("evict: every policy keeps its budget at every step, keeps sinks and pins, and its log replays") {
  // Budget 64 per (layer, kv head) for each; streamingllm's is sinks + window.
  for (const std::string spec : {"window:budget=64", "streamingllm:sinks=4,window=60", "h2o:budget=64,recent=16",
                           "tova:budget=64", "snapkv:budget=64,window=8", "pyramidkv:budget=64,window=8"}) {
    CAPTURE(spec);
    const EvictRun run = run_policy(spec, 60);
    CHECK(run.generated.size() >= 1);
    check_invariants(run);
    MESSAGE(spec << ": " << run.session->cache().eviction()->log().eviction_count() << " evictions over "
                 << run.session->cache().eviction()->steps() << " steps, " << run.session->tokens().size() << " tokens");
  }
}

TEST_CASE("evict: the scores pass equals a CPU sum of the attention rows (tova, one decode step)") {
  Engine& engine = test::shared_engine();
  kv::CacheConfig cc;
  cc.capacity = kCapacity;
  Session session(engine, cc);
  session.set_policy(kv::parse_policy_spec("tova:budget=64"));
  session.attention_probe().on = true;
  Sampler sampler(SamplerConfig{0.0f, 0, 1.0f, 0});
  session.generate(long_prompt(engine), 3, sampler);  // the last forward call is one decode step
  const LlamaConfig& cfg = engine.config();
  const uint32_t group = cfg.n_head / cfg.n_kv_head;
  float worst = 0, total = 0;
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    const auto rows = session.attention_probe().row(l);  // [n_head][capacity]
    const kv::LayerScores scores = session.cache().eviction()->scores().layer(l);
    REQUIRE(scores.capacity == kCapacity);
    for (uint32_t kv_head = 0; kv_head < cfg.n_kv_head; ++kv_head)
      for (uint32_t slot = 0; slot < kCapacity; ++slot) {
        float cpu = 0;
        for (uint32_t h = kv_head * group; h < (kv_head + 1) * group; ++h) cpu += rows[size_t{h} * kCapacity + slot];
        worst = std::max(worst, std::abs(cpu - scores.at(kv_head, slot)));
        total += scores.at(kv_head, slot);
      }
  }
  MESSAGE("worst |GPU - CPU| per-slot score: " << worst);
  CHECK(worst < 1e-5f);
  // Each query head's row sums to 1, so the scores of a layer sum to n_head.
  CHECK(std::abs(total - float(cfg.n_layer) * cfg.n_head) < 1e-2f * cfg.n_layer);
}

TEST_CASE("evict: the full policy at a small capacity is a clear ContextFull") {
  Engine& engine = test::shared_engine();
  kv::CacheConfig cc;
  cc.capacity = 64;
  Session session(engine, cc);
  session.set_policy(kv::parse_policy_spec("full"));
  const auto prompt = long_prompt(engine);
  REQUIRE(prompt.size() > 64);
  try {
    session.logits_all(prompt);
    FAIL("no ContextFull");
  } catch (const kv::ContextFull& e) {
    const std::string message = e.what();
    CHECK(message.find("context is full") != std::string::npos);
    CHECK(message.find("--on-full") != std::string::npos);  // what to do: evict once the context is full
  }
  // The session is still usable after a reset.
  session.reset();
  Sampler sampler(SamplerConfig{0.0f, 0, 1.0f, 0});
  CHECK(session.generate({1, 9038, 2501, 263, 931}, 4, sampler).size() == 4);
}

TEST_CASE("evict: a budget larger than the capacity is a clear error") {
  Engine& engine = test::shared_engine();
  kv::CacheConfig cc;
  cc.capacity = 32;
  Session session(engine, cc);
  CHECK_THROWS_AS(session.set_policy(kv::parse_policy_spec("window:budget=64")), std::invalid_argument);
}

TEST_CASE("evict: eval feeds an evicting cache token by token once its budget is reached") {
  Engine& engine = test::shared_engine();
  const std::vector<int32_t> tokens = engine.tokenizer().encode(test::read_text(test::data_path("corpus.txt")), true);
  EvaluationOptions o;
  o.n_ctx = 64;
  o.max_chunks = 2;
  CacheSpec window32, window64;
  window32.policy = "window:budget=32";
  window64.policy = "window:budget=64";  // the whole chunk fits: one prefill, as the baseline
  o.tests = {window32, window64};
  const EvaluationReport r = evaluate_caches(engine, tokens, o);
  REQUIRE(r.n_chunks == 2);
  REQUIRE(r.tests.size() == 2);
  const uint32_t heads = engine.config().n_layer * engine.config().n_kv_head;
  // 32 tokens of prefill, then 32 decode steps that each evict one token per (layer, kv head).
  CHECK(r.tests[0].run.evictions == 2ull * 32 * heads);
  CHECK(r.tests[0].run.tokens_evaluated == 2ull * 64);
  CHECK(r.tests[0].divergence.kl_mean > 0);
  CHECK(r.tests[1].run.evictions == 0);
  CHECK(r.tests[1].divergence.kl_max == 0.0);
  MESSAGE("window:budget=32 at n_ctx 64: KL mean " << r.tests[0].divergence.kl_mean << ", top-1 "
                                                   << r.tests[0].divergence.top1_agreement);
}
