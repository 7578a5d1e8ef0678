// The pieces under the window's forced comparison, conversations and cache
// specs: pure functions on hand-made inputs, then the worker on the model.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "app/core/forced_comparison.h"
#include "app/core/worker.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {

std::vector<float> log_softmax(std::vector<float> logits) {
  float max = logits[0];
  for (float l : logits) max = std::max(max, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l - max));
  for (float& l : logits) l = float(l - max - std::log(sum));
  return logits;
}

std::shared_ptr<const StepRecord> step(uint32_t index, std::vector<float> logits) {
  auto r = std::make_shared<StepRecord>();
  r->index = index;
  r->log_probs = log_softmax(logits);
  r->argmax = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  return r;
}

}  // namespace

TEST_CASE("forced: KL divergence is zero for equal distributions and matches the formula otherwise") {
  const std::vector<float> p = log_softmax({1, 2, 3}), q = log_softmax({3, 2, 1});
  CHECK(kl_divergence(p, p) == doctest::Approx(0).epsilon(1e-12));
  double expected = 0;
  for (size_t i = 0; i < 3; ++i) expected += std::exp(p[i]) * (p[i] - q[i]);
  CHECK(kl_divergence(p, q) == doctest::Approx(expected).epsilon(1e-6));  // float inputs
  CHECK(kl_divergence(p, q) > 0.5);
  CHECK_THROWS_WITH_AS(kl_divergence(p, log_softmax({1, 2})), doctest::Contains("share a vocabulary"),
                       std::invalid_argument);
}

TEST_CASE("forced: the comparison finds the first step whose top-1 differs, and grows step by step") {
  SessionSnapshot a, b;
  b.name = "B";
  a.steps = {step(0, {3, 1, 0}), step(1, {0, 3, 1}), step(2, {1, 0, 3})};
  b.steps = {step(0, {3, 1, 0}), step(1, {0, 3, 1})};
  ForcedComparison c;
  c.update(a, b);
  REQUIRE(c.result().steps.size() == 2);
  CHECK(c.result().first_divergence == -1);
  CHECK(c.result().top1_agreement() == 1.0);
  CHECK(c.result().mean_kl() == doctest::Approx(0).epsilon(1e-9));
  b.steps.push_back(step(2, {3, 1, 0}));  // B now prefers token 0 where A prefers 2
  c.update(a, b);
  REQUIRE(c.result().steps.size() == 3);
  CHECK(c.result().first_divergence == 2);
  CHECK_FALSE(c.result().steps[2].top1_agree);
  CHECK(c.result().steps[2].kl > 1);
  CHECK(c.result().top1_agreement() == doctest::Approx(2.0 / 3));
  CHECK(c.result().steps[0].lost_attention == -1);  // no attention rows were recorded
  const std::vector<SessionComparison> all{c.result()};
  const std::string csv = comparison_csv(all);
  CHECK(csv.rfind("session,cache,step,token,kl_nats,top1_agree,lost_attention\n", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 4);
  // A new reply (other records) starts the comparison over.
  b.steps = {step(0, {0, 0, 5})};
  a.steps = {step(0, {0, 0, 5})};
  c.update(a, b);
  CHECK(c.result().steps.size() == 1);
  CHECK(c.result().first_divergence == -1);
}

TEST_CASE("forced: session specs take a policy after '+', and say what is wrong") {
  const CacheSpec plain = parse_cache_spec("q8");
  CHECK(plain.policy.empty());
  const CacheSpec with = parse_cache_spec(" q4 + h2o:budget=64 ");
  CHECK(with.k_format == kv::Format::Q4);
  CHECK(with.policy.rfind("h2o:budget=64", 0) == 0);
  CHECK(parse_cache_spec(with.label()) == with);  // label() reads back
  CHECK_THROWS_WITH_AS(parse_cache_spec("f16 +"), doctest::Contains("name a policy"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_cache_spec("f16 + nosuch"), doctest::Contains("nosuch"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_cache_spec("q9 + h2o:budget=8"), doctest::Contains("q9"), std::invalid_argument);
}

TEST_CASE("forced: conversations round-trip through JSON, and a broken file names itself") {
  Conversation c;
  c.model = "m.gguf";
  c.cache = "f16 + h2o:budget=64";
  c.tokens = {1, 5, 6, 7, 8};
  c.pins.add({0, 2});
  Turn system{Turn::Role::System, "sys", 0, 2};
  Turn user{Turn::Role::User, "hi", 2, 1};
  Turn model{Turn::Role::Model, " there", 3, 2, 0.25, 40.0};
  c.turns = {system, user, model};
  const Conversation back = read_conversation_json(write_conversation_json(c), "c.json");
  CHECK(back.model == c.model);
  CHECK(back.cache == c.cache);
  CHECK(back.tokens == c.tokens);
  CHECK(back.pins.spans() == c.pins.spans());
  REQUIRE(back.turns.size() == 3);
  CHECK(back.turns[0].role == Turn::Role::System);
  CHECK(back.turns[2].text == " there");
  CHECK(back.turns[2].tok_s == 40.0);
  CHECK_THROWS_WITH_AS(read_conversation_json("{}", "x.json"), doctest::Contains("x.json"), std::runtime_error);
  CHECK_THROWS_WITH_AS(read_conversation_json("[1,", "y.json"), doctest::Contains("y.json"), std::runtime_error);
  std::string text = write_conversation_json(c);
  text.replace(text.find("\"n_tokens\": 2"), 13, "\"n_tokens\": 9");  // the system turn past the context
  CHECK_THROWS_WITH_AS(read_conversation_json(text, "z.json"), doctest::Contains("the context has 5"),
                       std::runtime_error);
}
