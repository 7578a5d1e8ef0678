// SessionWorker: a session on its own thread, commands in, snapshots out.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "app/core/worker.h"
#include "tests/shared_engine.h"
#include "tests/worker_wait.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {

// Waits (polling snapshots, as the GUI does) until the worker is idle.
using test::wait_idle;

GenerateRequest greedy(const std::string& text, uint32_t n) {
  GenerateRequest r;
  r.text = text;
  r.max_new = n;
  r.sampling.temperature = 0;
  return r;
}

const Turn& last_reply(const SessionSnapshot& s) {
  REQUIRE(!s.turns.empty());
  REQUIRE(s.turns.back().role == Turn::Role::Model);
  return s.turns.back();
}

}  // namespace

TEST_CASE("worker: a reply streams into snapshots with timings, occupancy and bytes") {
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  worker.generate(greedy("Once upon a time", 12));
  auto s = wait_idle(worker);
  CHECK(s->error.empty());
  CHECK(s->state == SessionSnapshot::State::Idle);
  REQUIRE(s->turns.size() == 2);
  CHECK(s->turns[0].role == Turn::Role::User);
  const Turn& reply = last_reply(*s);
  CHECK(reply.n_tokens == 12);
  CHECK(!reply.text.empty());
  CHECK(reply.ttft_seconds > 0);
  CHECK(reply.tok_s > 0);
  CHECK_FALSE(reply.streaming);
  // The context: BOS + prompt + reply, every token held by every layer.
  CHECK(s->tokens.size() == s->pieces.size());
  CHECK(s->tokens.size() == s->used_tokens);
  CHECK(s->tokens.size() == reply.first_token + reply.n_tokens);
  REQUIRE(s->layers.size() == test::shared_engine().config().n_layer);
  for (const LayerOccupancy& o : s->layers) {
    CHECK(o.live_max == s->used_tokens);
    CHECK(o.capacity == test::shared_engine().n_ctx());
  }
  for (uint16_t held : s->layers_holding) CHECK(held == s->layers.size());
  CHECK(s->cache_bytes_full > 0);
  CHECK(s->bytes_per_token > 0);
}

TEST_CASE("worker: greedy regenerate writes the same reply; reset empties the cache") {
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  worker.generate(greedy("The cat", 10));
  const std::string first = last_reply(*wait_idle(worker)).text;
  SamplerConfig greedy_sampling;
  greedy_sampling.temperature = 0;
  worker.regenerate(10, greedy_sampling);
  auto s = wait_idle(worker);
  CHECK(s->turns.size() == 2);
  CHECK(last_reply(*s).text == first);
  worker.reset();
  s = wait_idle(worker);
  CHECK(s->turns.empty());
  CHECK(s->used_tokens == 0);
  CHECK(s->tokens.empty());
}

TEST_CASE("worker: stop ends a long reply early and the app keeps working") {
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  worker.generate(greedy("Once upon a time", 200));
  while (worker.snapshot()->turns.empty() || last_reply(*worker.snapshot()).n_tokens < 2)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  worker.stop();
  auto s = wait_idle(worker);
  CHECK(last_reply(*s).stopped);
  CHECK(last_reply(*s).n_tokens < 200);
  // What is shown is what the cache holds: no token past the stop.
  CHECK(s->used_tokens == s->tokens.size());
}

TEST_CASE("worker: errors land in the snapshot, not in an exception") {
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  worker.generate(greedy("", 4));
  auto s = wait_idle(worker);
  CHECK(s->state == SessionSnapshot::State::Error);
  CHECK(s->error.find("prompt") != std::string::npos);
  worker.generate(greedy("Hello", 3));  // and the next command works
  s = wait_idle(worker);
  CHECK(s->error.empty());
  CHECK(last_reply(*s).n_tokens == 3);
}

TEST_CASE("worker: two sessions on one engine take turns token by token and match a lone session") {
  EngineTurns turns;
  SessionWorker a(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  SessionWorker b(test::shared_engine(), turns, "B", parse_cache_spec("f16"));
  a.generate(greedy("Once upon a time", 24));
  b.generate(greedy("Once upon a time", 24));
  // While both write, neither finishes before the other has started.
  bool both_streaming = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while ((a.busy() || b.busy()) && std::chrono::steady_clock::now() < deadline) {
    auto sa = a.snapshot(), sb = b.snapshot();
    if (!sa->turns.empty() && !sb->turns.empty() && last_reply(*sa).n_tokens > 0 &&
        last_reply(*sb).n_tokens > 0 && (a.busy() && b.busy()))
      both_streaming = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(both_streaming);
  auto sa = wait_idle(a), sb = wait_idle(b);
  CHECK(sa->tokens == sb->tokens);  // same cache, same greedy tokens
  SessionWorker lone(test::shared_engine(), turns, "C", parse_cache_spec("f16"));
  lone.generate(greedy("Once upon a time", 24));
  CHECK(wait_idle(lone)->tokens == sa->tokens);
}

TEST_CASE("token display text: spaces, newlines and control tokens") {
  const Tokenizer& tok = test::shared_engine().tokenizer();
  CHECK(token_display_text(tok, tok.bos()) == "<s>");
  const std::vector<int32_t> ids = tok.encode("Hello world", false);
  std::string joined;
  for (int32_t id : ids) joined += token_display_text(tok, id);
  CHECK(joined == " Hello world");
  const std::vector<int32_t> newline = tok.encode("\n", false);
  bool has_return_glyph = false;
  for (int32_t id : newline) has_return_glyph |= token_display_text(tok, id) == "\xE2\x86\xB5";
  CHECK(has_return_glyph);
  CHECK(token_display_text(tok, -5) == "?");
}

TEST_CASE("probe rows: slot-indexed probabilities land at their token positions") {
  Engine& engine = test::shared_engine();
  const LlamaConfig& c = engine.config();
  kv::CacheConfig config;
  config.capacity = 16;
  kv::KvCache cache(engine.context(), engine.model().cache_shape(), config, 8);
  const std::vector<int32_t> positions{0, 1, 2, 3, 4};
  cache.reserve(positions);
  cache.truncate(3);  // positions 3 and 4 leave; their slots are empty
  const uint32_t n_head = c.n_head;
  std::vector<float> by_slot(size_t{n_head} * config.capacity, 0.0f);
  for (uint32_t h = 0; h < n_head; ++h)
    for (uint32_t slot = 0; slot < config.capacity; ++slot) by_slot[size_t{h} * config.capacity + slot] = h + slot * 0.01f;
  const ProbeRow row = probe_row_from_slots(cache, 1, n_head, 4, by_slot);
  CHECK(row.n_pos == 5);
  CHECK(row.layer == 1);
  CHECK(row.positions == std::vector<int32_t>{0, 1, 2});  // only what the cache holds is kept
  for (uint32_t pos = 0; pos < 3; ++pos) {
    CHECK(row.slot_of(pos) == static_cast<int32_t>(pos));  // empty cache: slot i holds position i
    for (uint32_t h = 0; h < n_head; ++h) CHECK(row.prob(static_cast<int>(h), pos) == doctest::Approx(h + pos * 0.01f));
  }
  CHECK(row.slot_of(3) == -1);  // not in the cache: drawn as evicted
  CHECK(row.prob(0, 3) == 0.0f);
  CHECK(row.prob(-1, 1) == doctest::Approx((n_head - 1) / 2.0 + 0.01).epsilon(1e-5));  // the mean of heads
  CHECK_THROWS_AS(probe_row_from_slots(cache, 0, n_head, 4, std::span<const float>(by_slot).first(3)),
                  std::invalid_argument);
}

TEST_CASE("worker: with probes wanted, each step's attention rows sum to 1 per head over held positions") {
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  worker.set_probes_wanted(true);
  worker.generate(greedy("Once upon a time", 8));
  auto s = wait_idle(worker);
  const uint32_t n_layer = test::shared_engine().config().n_layer;
  REQUIRE(s->probes.size() == size_t{9} * n_layer);  // the prompt's last token, then 8 decode steps
  for (const auto& row : s->probes) {
    CHECK(row->n_pos == row->step + 1);
    for (uint32_t h = 0; h < row->n_head; ++h) {
      double sum = 0;
      for (uint32_t pos = 0; pos < row->n_pos; ++pos) sum += row->prob(static_cast<int>(h), pos);
      CHECK(sum == doctest::Approx(1.0).epsilon(1e-4));
    }
  }
  CHECK(s->probes.back()->step == s->used_tokens - 1);
  // Unwanted: no rows, and the model's readback is off again for others.
  worker.set_probes_wanted(false);
  worker.reset();
  worker.generate(greedy("Hello", 4));
  s = wait_idle(worker);
  CHECK(s->probes.empty());
}

TEST_CASE("worker: a forced reply reads the given tokens and records each step's distribution and cache") {
  EngineTurns turns;
  SessionWorker full(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  GenerateRequest r = greedy("Once upon a time", 16);
  r.record = true;
  full.generate(r);
  const auto a = wait_idle(full);
  REQUIRE(a->error.empty());
  const Turn& reply = last_reply(*a);
  REQUIRE(reply.n_tokens == 16);
  REQUIRE(a->steps.size() == 16);
  const std::vector<int32_t> tokens(a->tokens.begin() + reply.first_token, a->tokens.end());
  for (size_t i = 0; i < a->steps.size(); ++i) {
    const StepRecord& st = *a->steps[i];
    CHECK(st.token == tokens[i]);
    CHECK(st.argmax == tokens[i]);  // greedy
    double sum = 0;
    for (float lp : st.log_probs) sum += std::exp(double(lp));
    CHECK(sum == doctest::Approx(1).epsilon(1e-4));
    CHECK(st.n_pos == reply.first_token + i);
    for (uint8_t h : st.held.held) CHECK(h == 1);  // a full cache holds everything
  }

  SessionWorker evicting(test::shared_engine(), turns, "B", parse_cache_spec("f16 + h2o:budget=8,recent=4"));
  GenerateRequest forced = greedy("Once upon a time", 16);
  forced.forced = tokens;
  evicting.generate(forced);
  const auto b = wait_idle(evicting);
  REQUIRE(b->error.empty());
  CHECK(b->tokens == a->tokens);
  REQUIRE(b->steps.size() == 16);
  const StepRecord& last = *b->steps.back();
  size_t held = 0;
  for (uint8_t h : last.held.held) held += h;
  CHECK(held <= size_t{8} * last.held.n_layer * last.held.n_kv_head);  // the budget, in every table
  CHECK(b->log != nullptr);
  CHECK(b->log->eviction_count() > 0);
}

TEST_CASE("worker: editing a message drops what follows it; pins set later are kept by the policy") {
  EngineTurns turns;
  SessionWorker w(test::shared_engine(), turns, "A", parse_cache_spec("f16 + h2o:budget=16,recent=4"));
  w.generate(greedy("Once upon a time", 8));
  wait_idle(w);
  w.edit(0, "The little dog", greedy("", 6));
  auto s = wait_idle(w);
  REQUIRE(s->error.empty());
  REQUIRE(s->turns.size() == 2);
  CHECK(s->turns[0].text == "The little dog");
  CHECK(last_reply(*s).n_tokens == 6);
  const std::vector<int32_t> dog = test::shared_engine().tokenizer().encode("The little dog", true);
  REQUIRE(s->tokens.size() == dog.size() + 6);
  CHECK(std::equal(dog.begin(), dog.end(), s->tokens.begin()));

  const std::vector<int32_t> before = s->tokens;
  w.set_pins(kv::PinnedSpans({{1, 4}}));
  s = wait_idle(w);
  REQUIRE(s->error.empty());
  CHECK(s->tokens == before);
  CHECK(s->pins.contains(1));
  CHECK(s->pins.contains(3));
  CHECK_FALSE(s->pins.contains(4));
  w.generate(greedy(" and then", 24));
  s = wait_idle(w);
  REQUIRE(s->error.empty());
  CHECK(s->log->eviction_count() > 0);
  for (int32_t p = 1; p < 4; ++p) CHECK(s->layers_holding[p] == s->layers.size());

  // A session without a policy says why it has nothing to pin.
  SessionWorker plain(test::shared_engine(), turns, "B", parse_cache_spec("f16"));
  plain.set_pins(kv::PinnedSpans({{0, 2}}));
  CHECK(wait_idle(plain)->error.find("no eviction policy") != std::string::npos);
}

TEST_CASE("worker: with a chat template, a new message adds only its own tokens to the cache") {
  EngineTurns turns;
  SessionWorker w(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  GenerateRequest r = greedy("Hello", 4);
  r.chat_template = chat_template_by_name("chatml");
  r.system = "Be brief.";
  w.generate(r);
  auto s = wait_idle(w);
  REQUIRE(s->error.empty());
  REQUIRE(s->turns.size() == 3);  // system, you, model
  const std::vector<int32_t> first = s->tokens;
  // The template wrote the system prompt and the message's markup.
  const std::vector<ChatMessage> messages{{"system", "Be brief."}, {"user", "Hello"}};
  const std::vector<int32_t> rendered = encode_chat(*r.chat_template, messages, true, test::shared_engine().tokenizer());
  REQUIRE(first.size() >= rendered.size());
  CHECK(std::equal(rendered.begin(), rendered.end(), first.begin()));
  r.text = "Again";
  w.generate(r);
  s = wait_idle(w);
  REQUIRE(s->error.empty());
  REQUIRE(s->turns.size() == 5);
  CHECK(std::equal(first.begin(), first.end(), s->tokens.begin()));  // kept, not read again
  CHECK(s->turns[3].first_token == first.size());
}

TEST_CASE("worker: device faults mid-session end in a clear error and keep the conversation") {
  // An engine of its own: a lost device stays lost.
  EngineOptions options;
  options.model_path = test::model_path();
  Engine engine(options);
  EngineTurns turns;
  SessionWorker a(engine, turns, "A", parse_cache_spec("f16 + h2o:budget=64,recent=16"));
  a.generate(greedy("Once upon a time", 200));
  // Lost part way through the reply (after a few tokens have streamed).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (a.snapshot()->turns.size() < 2 || a.snapshot()->turns.back().n_tokens < 5) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  engine.context().simulate_device_lost();
  auto s = wait_idle(a);
  CHECK(s->state == SessionSnapshot::State::Error);
  CHECK(s->device_lost);
  CHECK_MESSAGE(s->error.find("VK_ERROR_DEVICE_LOST") != std::string::npos, s->error);
  CHECK(s->error.find("reopen the model") != std::string::npos);
  REQUIRE(s->turns.size() == 2);
  CHECK(s->turns[0].text == "Once upon a time");
  const std::string partial = s->turns[1].text;
  CHECK(!partial.empty());
  CHECK(s->tokens.size() > 5);
  // Whatever comes next on the lost device says the same, never runs.
  a.generate(greedy("The end.", 4));
  s = wait_idle(a);
  CHECK(s->device_lost);
  SessionWorker b(engine, turns, "B", parse_cache_spec("f16"));  // a session added after the loss
  const auto sb = wait_idle(b);
  CHECK(sb->device_lost);
  CHECK(sb->error.find("VK_ERROR_DEVICE_LOST") != std::string::npos);

  // An allocation that fails part way (another session added when the
  // device is nearly full): that session's error names the allocation and
  // what to do; the others go on.
  Engine fresh(options);
  SessionWorker c(fresh, turns, "C", parse_cache_spec("f16"));
  wait_idle(c);
  fresh.context().set_device_memory_budget(fresh.context().bytes_allocated() + 4096);
  SessionWorker d(fresh, turns, "D", parse_cache_spec("f32"));
  const auto sd = wait_idle(d);
  CHECK(sd->state == SessionSnapshot::State::Error);
  CHECK_FALSE(sd->device_lost);
  CHECK_MESSAGE(sd->error.find("out of device memory") != std::string::npos, sd->error);
  CHECK(sd->error.find("smaller context") != std::string::npos);
  // The conversation of the lost session carries over to a session on the
  // new engine (the window's reload) and goes on from where it stopped.
  Conversation kept;
  kept.turns = s->turns;
  kept.tokens = s->tokens;
  c.load(kept);
  wait_idle(c);
  c.generate(greedy("The end.", 6));
  const auto sc = wait_idle(c);
  CHECK(sc->error.empty());
  REQUIRE(sc->turns.size() == 4);
  CHECK(sc->turns[1].text == partial);
  CHECK(sc->turns[3].n_tokens > 0);
  fresh.context().set_device_memory_budget(0);
}
