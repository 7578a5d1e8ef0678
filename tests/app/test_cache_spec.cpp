// One cache spec, one validator: the window's session field, --compare and
// the CLI's flags all become a CacheSpec checked by plan_cache, so a cache is
// refused (or run as written) the same way everywhere.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "app/core/cache_spec.h"
#include "app/core/session.h"
#include "app/core/worker.h"
#include "kv/policy.h"
#include "tests/app/cli_runner.h"
#include "tests/shared_engine.h"
#include "tests/worker_wait.h"

using namespace kvscope;

namespace {
std::string refusal(const CacheSpec& spec, uint32_t capacity = 256) {
  try {
    plan_cache(spec, test::shared_engine().model().cache_shape(), capacity);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(accepted)";
}

}  // namespace

TEST_CASE("cache spec: one grammar for storage, policy, pins, on-full and spill; label() reads back") {
  const CacheSpec bare = parse_cache_spec("h2o:budget=64");  // a policy alone: on f16
  CHECK(bare.k_format == kv::Format::F16);
  CHECK(bare.v_format == kv::Format::F16);
  CHECK(bare.policy == "h2o:budget=64,recent=32");
  CHECK(parse_cache_spec("full").policy == "full");
  const CacheSpec all = parse_cache_spec("q8,group=16 + snapkv:budget=48 + pin=0:4 + pin=10:12 + spill=1.5");
  CHECK(all.k_format == kv::Format::Q8);
  CHECK(all.group_size == 16u);
  CHECK(all.pins.count() == 6);
  CHECK(all.spill);
  CHECK(all.spill_max_bytes == uint64_t(1.5 * 1048576));
  CHECK(parse_cache_spec(all.label()) == all);
  // The Hadamard rotation of quantized keys: on unless said, in the config and the label.
  CHECK(parse_cache_spec("q4").config(64).hadamard);
  const CacheSpec plain = parse_cache_spec("q4,hadamard=off + h2o:budget=32");
  CHECK(plain.hadamard == false);
  CHECK_FALSE(plain.config(64).hadamard);
  CHECK(plain.name() == "q4,hadamard=off");
  CHECK(parse_cache_spec(plain.label()) == plain);
  CHECK(parse_cache_spec("k=kivi2,v=f16,hadamard=on").config(64).hadamard);
  // Sparse-V: a threshold on the attention weight, any format; label reads back.
  const CacheSpec sparse = parse_cache_spec("f16,sparse_v=0.001 + window:budget=64");
  CHECK(sparse.config(64).sparse_v == 0.001f);
  CHECK(sparse.name() == "f16,sparse_v=0.001");
  CHECK(parse_cache_spec(sparse.label()) == sparse);
  CHECK(parse_cache_spec("q4").config(64).sparse_v == 0.0f);
  const CacheSpec on_full = parse_cache_spec("on-full=streamingllm:sinks=4,window=252");
  CHECK(on_full.policy.empty());
  CHECK(parse_cache_spec(on_full.label()) == on_full);
  for (const auto& [text, expected] : std::initializer_list<std::pair<const char*, const char*>>{
           {"f16 +", "empty part"},
           {"f16 + nosuch", "unknown format 'nosuch'"},
           {"q9 + h2o:budget=8", "unknown format 'q9'"},
           {"lru:budget=3", "unknown eviction policy 'lru'"},
           {"h2o:bugdet=8", "unknown option 'bugdet'"},
           {"f16 + h2o:budget=64 + window:budget=8", "the policy given twice"},
           {"h2o:budget=64 + on-full=window:budget=256", "already evicts"},
           {"f16 + spill", "has no policy"},
           {"window:budget=64 + spill=-2", "spill cap"},
           {"f16 + pin=5", "START:END"},
           {"f16,hadamard=off", "the Hadamard rotation applies to quantized keys (q8, q4, kivi2); the cache f16,hadamard=off has f16 keys"},
           {"k=f32,v=q4,hadamard=on", "has f32 keys"},
           {"q4,hadamard=maybe", "write on or off, not 'maybe'"},
           {"q4,hadamard=on,hadamard=off", "the Hadamard rotation given twice"},
           {"f16,sparse_v=1.5", "an attention weight in [0, 1)"},
           {"f16,sparse_v=-0.1", "not '-0.1'"},
           {"f16,sparse_v=abc", "not 'abc'"},
       }) {
    CAPTURE(text);
    CHECK_THROWS_WITH_AS(parse_cache_spec(text), doctest::Contains(expected), std::invalid_argument);
  }
}

TEST_CASE("cache spec: the flags build the same spec, and name the flag that is wrong") {
  CacheFlags f;
  f.kv = "q4";
  f.policy = "h2o:budget=64";
  f.pins = {"0:8"};
  f.spill = true;
  f.spill_max_mb = 2;
  CHECK(cache_spec_from_flags(f) == parse_cache_spec("q4 + h2o:budget=64 + pin=0:8 + spill=2"));
  f.spill_max_mb = -5;
  CHECK_THROWS_WITH_AS(cache_spec_from_flags(f), doctest::Contains("--spill-max-mb"), std::invalid_argument);
  f = {};
  f.spill_max_mb = 4;
  CHECK_THROWS_WITH_AS(cache_spec_from_flags(f), doctest::Contains("add --spill"), std::invalid_argument);
  f = {};
  f.kv = "kivi2";
  f.kv_hadamard = "off";
  CHECK(cache_spec_from_flags(f) == parse_cache_spec("kivi2,hadamard=off"));
  f.kv = "f16";
  CHECK_THROWS_WITH_AS(cache_spec_from_flags(f), doctest::Contains("quantized keys"), std::invalid_argument);
  f.kv_hadamard = "perhaps";
  CHECK_THROWS_WITH_AS(cache_spec_from_flags(f), doctest::Contains("--kv-hadamard: write on or off"),
                       std::invalid_argument);
  f = {};
  f.policy = "lru:budget=3";
  CHECK_THROWS_WITH_AS(cache_spec_from_flags(f), doctest::Contains("--policy lru:budget=3"), std::invalid_argument);
}

TEST_CASE("cache spec: plan_cache refuses what cannot hold, with what to change") {
  // The bug this guards: h2o:budget=16 keeps a recent window of 32 by default.
  CHECK(refusal(parse_cache_spec("f16 + h2o:budget=16")).find("recent (32) must be smaller than budget (16)") !=
        std::string::npos);
  CHECK(refusal(parse_cache_spec("window:budget=300")).find("more than the cache's 256") != std::string::npos);
  CHECK(refusal(parse_cache_spec("window:budget=8 + pin=0:20")).find("pin fewer tokens") != std::string::npos);
  CHECK(refusal(parse_cache_spec("on-full=window:budget=64")).find("budget of 256") != std::string::npos);
  CHECK(refusal(parse_cache_spec("q8,group=7")).find("7") != std::string::npos);
  CHECK(refusal(parse_cache_spec("k=kivi2,v=f16 + window:budget=64 + spill")).find("--kv-k") != std::string::npos);
  CHECK(refusal(parse_cache_spec("streamingllm:sinks=4,window=60,rolling + spill")).find("rolling") !=
        std::string::npos);
  CHECK(refusal(parse_cache_spec("q4 + h2o:budget=64,recent=16 + pin=0:4")) == "(accepted)");
}

TEST_CASE("cache spec: the window's session and the CLI refuse h2o:budget=16 with the same message") {
  const test::CliResult cli = test::kvscope_cli("run -n 4 --temp 0 --policy h2o:budget=16");
  CHECK(cli.code != 0);
  const std::string reason = "recent (32) must be smaller than budget (16)";
  CHECK_MESSAGE(cli.out.find(reason) != std::string::npos, cli.out);

  // The window's path: a SessionWorker made from the text typed in its field.
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "B", parse_cache_spec("f16 + h2o:budget=16"));
  const auto s = test::wait_idle(worker);
  CHECK(s->state == SessionSnapshot::State::Error);
  CHECK_MESSAGE(s->error.find(reason) != std::string::npos, s->error);
  // It never runs without its policy: a prompt is refused, nothing is generated.
  GenerateRequest r;
  r.text = "Once upon a time";
  r.max_new = 4;
  worker.generate(r);
  CHECK(test::wait_idle(worker)->tokens.empty());

  // --compare / the session field with the policy alone runs that policy on f16.
  SessionWorker bare(test::shared_engine(), turns, "C", parse_cache_spec("h2o:budget=16,recent=4"));
  CHECK(test::wait_idle(bare)->state == SessionSnapshot::State::Idle);
}

TEST_CASE("cache spec: a budget typed in the window holds, as on the CLI") {
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16 + h2o:budget=16,recent=8"));
  GenerateRequest r;
  r.text = "Once upon a time there was a little girl named Lily who loved to play";
  r.max_new = 24;
  r.sampling.temperature = 0;
  worker.generate(r);
  const auto s = test::wait_idle(worker);
  REQUIRE_MESSAGE(s->error.empty(), s->error);
  CHECK(s->tokens.size() > 16);
  for (const LayerOccupancy& layer : s->layers) CHECK(layer.live_max <= 16);
  REQUIRE(s->log != nullptr);
  CHECK(s->log->eviction_count() > 0);
}

TEST_CASE("cache spec: chat refuses --spill-max-mb -5 and --spill without a policy, as run does") {
  for (const char* flags : {"--spill-max-mb -5", "--spill"}) {
    CAPTURE(flags);
    const test::CliResult run = test::kvscope_cli(std::string("run -n 1 ") + flags);
    const test::CliResult chat = test::kvscope_cli(std::string("chat ") + flags + " < /dev/null");
    CHECK(run.code != 0);
    CHECK(chat.code != 0);
    const auto line = [](const std::string& out) { return out.substr(out.find("error:")); };
    REQUIRE(run.out.find("error:") != std::string::npos);
    REQUIRE(chat.out.find("error:") != std::string::npos);
    CHECK(line(run.out) == line(chat.out));
  }
}

TEST_CASE("cache spec: the system prompt is pinned with a chat template too") {
  const Engine& engine = test::shared_engine();
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16 + window:budget=48"));
  GenerateRequest r;
  r.text = "Tell me a story";
  r.system = "You are a storyteller for children";
  r.max_new = 4;
  r.sampling.temperature = 0;
  r.chat_template = chat_template_by_name("chatml");
  worker.generate(r);
  const auto s = test::wait_idle(worker);
  REQUIRE_MESSAGE(s->error.empty(), s->error);
  const std::vector<int32_t> alone = encode_chat(*r.chat_template, std::vector<ChatMessage>{{"system", r.system}},
                                                 false, engine.tokenizer());
  REQUIRE(s->pins.spans().size() == 1);
  CHECK(s->pins.spans().front().begin == 0);
  CHECK(s->pins.spans().front().end > 4);
  CHECK(static_cast<size_t>(s->pins.spans().front().end) <= alone.size());
}
