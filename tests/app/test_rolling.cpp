// Rolling StreamingLLM end to end on the default model (context 256): with
// RoPE at cache-relative positions, a 128-slot cache generates 2,000 tokens —
// eight times the trained context — without NaN, and the text stays as
// likely under the model as at the start (the mean negative log-likelihood
// of the sampled tokens per 250-token window does not blow up).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "app/core/session.h"
#include "kv/event_log.h"
#include "kv/policy.h"
#include "tests/shared_engine.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {

// -log p(token) under the logits (log-softmax, max-shifted).
double negative_log_likelihood(std::span<const float> logits, int32_t token) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(double(x) - max);
  return std::log(sum) - (double(logits[token]) - max);
}

struct LongRun {
  std::vector<double> window_nll;  // mean NLL of the sampled tokens per window
  uint32_t non_finite = 0;
  double seconds = 0;
};

// Samples (temperature 1: the NLL of a sample is the model's own surprise)
// `n_new` tokens after a short prompt with `policy` on a cache of `capacity`.
LongRun generate_long(const std::string& policy, uint32_t capacity, uint32_t n_new, uint32_t window) {
  Engine& engine = test::shared_engine();
  kv::CacheConfig cc;
  cc.capacity = capacity;
  Session session(engine, cc);
  session.set_policy(kv::parse_policy_spec(policy));
  Sampler sampler(SamplerConfig{1.0f, 0, 1.0f, 1234});
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = session.logits_all(engine.tokenizer().encode("Once upon a time, there was a", true));
  session.end_prefill();
  const size_t n_vocab = engine.config().n_vocab;
  LongRun run;
  double sum = 0;
  for (uint32_t i = 0; i < n_new; ++i) {
    const std::span<const float> last(logits.data() + logits.size() - n_vocab, n_vocab);
    for (float x : last) run.non_finite += std::isfinite(x) ? 0 : 1;
    const int32_t next = sampler.sample(last);
    sum += negative_log_likelihood(last, next);
    if ((i + 1) % window == 0) run.window_nll.push_back(sum / window), sum = 0;
    logits = session.logits_all({next});
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return run;
}

std::string describe(const LongRun& run) {
  std::string s;
  for (double w : run.window_nll) s += fmt::format(" {:.3f}", w);
  return fmt::format("mean NLL per window:{} ({:.1f} s)", s, run.seconds);
}

}  // namespace

TEST_CASE("rolling streamingllm: 2,000 tokens past a 256-token context on 128 slots, stable likelihood") {
  const uint32_t n_ctx = test::shared_engine().n_ctx();
  REQUIRE(n_ctx == 256);
  const LongRun run = generate_long("streamingllm:sinks=4,window=124,rolling", 128, 2000, 250);
  MESSAGE("rolling: " << describe(run));
  CHECK(run.non_finite == 0);
  REQUIRE(run.window_nll.size() == 8);
  for (double w : run.window_nll) CHECK(std::isfinite(w));
  // Measured on lavapipe (README, "Eviction policies"): 0.75 1.19 1.10 0.78
  // 1.18 1.50 1.26 0.99 nats; without rolling (positions past 256 go to RoPE
  // as they are) 0.87 2.35 2.84 2.30 3.19 2.51 3.41 3.08, which fails both.
  const auto& w = run.window_nll;
  CHECK(w.back() < 2.0 * w.front());
  const double first_two = (w[0] + w[1]) / 2, last_four = (w[4] + w[5] + w[6] + w[7]) / 4;
  CHECK_MESSAGE(last_four < 1.5 * first_two, "the last 1,000 tokens average " << last_four
                                                 << " nats against " << first_two << " for the first 500");
}

TEST_CASE("rolling streamingllm: the cache holds at most 128 slots and RoPE positions stay below them") {
  Engine& engine = test::shared_engine();
  kv::CacheConfig cc;
  cc.capacity = 128;
  Session session(engine, cc);
  session.set_policy(kv::parse_policy_spec("streamingllm:sinks=4,window=124,rolling"));
  REQUIRE(session.cache().rolling());
  std::vector<int32_t> ids = engine.tokenizer().encode("Once upon a time", true);
  session.logits_all(ids);
  session.end_prefill();
  for (int i = 0; i < 300; ++i) session.logits_all({ids[1 + i % (ids.size() - 1)]});
  const kv::KvCache& cache = session.cache();
  CHECK(session.tokens().size() > engine.n_ctx());  // positions grew past the context
  const std::vector<int32_t> last = {int32_t(session.tokens().size()) - 1};
  CHECK(cache.rope_query_positions(last).front() == 127);  // the newest token: rank 127 of 128
  for (uint32_t l = 0; l < cache.shape().n_layer; ++l)
    for (uint32_t h = 0; h < cache.shape().n_kv_head; ++h) CHECK(cache.table(l, h).live() == 128);
  // The sinks stay, and the log replays to the tables.
  CHECK(cache.table(0, 0).positions()[0] == 0);
  const auto replayed = kv::replay(cache.eviction()->log());
  for (size_t i = 0; i < replayed.size(); ++i) CHECK(std::ranges::equal(replayed[i].positions(), cache.tables()[i].positions()));
}

