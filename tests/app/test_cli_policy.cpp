// `--policy`, `--pin` and `--trace` on run and bench, as a person types them.
#include <doctest/doctest.h>

#include <fstream>

#include "kv/event_log.h"
#include "tests/app/cli_runner.h"
#include "tests/test_util.h"

using namespace kvscope;
using nlohmann::json;
using test::kvscope_cli;

TEST_CASE("cli: run --policy --pin --trace evicts within the budget and writes a log that replays") {
  test::model_path();
  const std::string trace = "/tmp/kvscope-test-cli-policy-trace.jsonl";
  const auto r = kvscope_cli("run -p 'Once upon a time' -n 60 --temp 0 --json --policy h2o:budget=32,recent=8 "
                             "--pin 0:4 --trace " + trace);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = test::last_json(r.out);
  CHECK(j["policy"] == "h2o:budget=32,recent=8");
  CHECK(j["evictions"].get<uint64_t>() > 0);
  REQUIRE(j["ids"].size() == 60);
  // Until the budget is reached nothing is evicted: the reference continuation.
  const json reference = {29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889, 2296, 18012};
  CHECK(json(std::vector<json>(j["ids"].begin(), j["ids"].begin() + 12)) == reference);

  std::ifstream in(trace);
  REQUIRE(in);
  const kv::EventLog log = kv::read_jsonl(in, trace);
  CHECK(log.header().policy == "h2o:budget=32,recent=8");
  CHECK(log.eviction_count() == j["evictions"].get<uint64_t>());
  for (const auto& o : log.occupancies())
    for (uint32_t live : o.live) CHECK(live <= 32);
  const auto tables = kv::replay(log);
  for (const auto& t : tables) {
    CHECK(t.live() == 32);
    for (int32_t p = 0; p < 4; ++p) {  // pinned
      const auto positions = t.positions();
      CHECK(std::find(positions.begin(), positions.end(), p) != positions.end());
    }
  }
  std::remove(trace.c_str());
}

TEST_CASE("cli: bench --policy reports the policy") {
  test::model_path();
  const auto r = kvscope_cli("bench -p 32 -n 32 -r 1 --json --policy window:budget=24");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = test::last_json(r.out);
  CHECK(j["policy"] == "window:budget=24");
  CHECK(j["decode_tok_s"].get<double>() > 0);
}

TEST_CASE("cli: a bad --policy or --pin is one clear line and a non-zero exit") {
  test::model_path();
  const std::pair<const char*, const char*> cases[] = {
      {"--policy lru:budget=3", "known policies"},
      {"--policy window", "needs 'budget'"},
      {"--policy window:budget=64,recent=3", "recent"},
      {"--policy window:budget=8 --pin 5", "START:END"},
      {"--policy window:budget=8 --pin 0:20", "pin fewer tokens"},
      {"--policy window:budget=100000", "budget"},
  };
  for (const auto& [args, expected] : cases) {
    CAPTURE(args);
    const auto r = kvscope_cli(std::string("run -n 2 --temp 0 ") + args);
    CHECK(r.code != 0);
    CHECK(test::count_lines(r.out) == 1);
    CHECK_MESSAGE(r.out.find(expected) != std::string::npos, r.out);
    CHECK(r.out.starts_with("kvscope: error: "));
  }
}
